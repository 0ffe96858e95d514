package mediarelay

import (
	"net/netip"
	"sync/atomic"
)

// maxPayload is the largest datagram the relay forwards; a larger one is dropped as truncated
// rather than forwarded cut. RTP is far smaller.
const maxPayload = 2040

// Why a packet was dropped; indexes of packetCounters.drops and label values of the metric.
const (
	dropUnknownPort = iota // no stream on the port, or addressed to another address
	dropBleed              // not from the latched (or, strict, the SDP) peer
	dropNoPeer             // the other leg's peer is not known yet
	dropTruncated          // larger than maxPayload
	dropSend               // the kernel refused to send it
	numDrops
)

var dropReasons = [numDrops]string{DropUnknownPort, DropBleed, DropNoPeer, DropTruncated, DropSend}

// packetCounters are the relay-wide counters of one packet goroutine. They are atomic, for
// [Relay.Counters] reads them at any time; each goroutine has its own, so that the packet path
// never shares a cache line with another worker's.
type packetCounters struct {
	queued atomic.Uint64 // packets handed to the send; those the kernel refused count in drops too
	drops  [numDrops]atomic.Uint64
	// Packets read from fan-in sockets and from the ports' own, whatever became of them.
	rxFanIn, rxPort atomic.Uint64
}

// rxState is what a packet goroutine hands forward: where it counts, when its current packets
// arrived, and the queue of packets forwarded and waiting for its send. On Linux each worker
// has one, queueing a batch; elsewhere each port's goroutine has one, queueing one packet.
type rxState struct {
	r         *Relay
	c         *packetCounters // the goroutine's own on Linux, shared elsewhere
	nowNs     int64           // when the packets arrived, unix nanoseconds
	sinceBase int64           // the same, since Relay.base
	pend      [batchSize]pending
	npnd      int
	q         rxQuality // quality_path.go
}

// pending is a packet forwarded and waiting for the send.
type pending struct {
	slot int32      // where it lies in the goroutine's buffers (Linux: its batch slot)
	n    int32      // its length
	out  *endpoint  // the endpoint it leaves from
	dst  *peerState // where it goes: dst.dst
}

// forward applies the relay's rules to a packet that arrived from src at the relay address dst:
// the first n bytes of room, or, if truncated, a datagram larger than the relay forwards. It
// finds the endpoint of dst, applies latching, counts the packet in the stream's statistics
// and in st, and queues it in st.pend (at slot, for the sender to find it) to leave from the
// other leg's endpoint to its peer, unless it drops it (counted in st by reason). This is the
// per-packet path of every platform: it allocates nothing (latching aside, once per stream)
// and takes no lock the control plane holds.
func (st *rxState) forward(slot int, room []byte, n int, truncated bool, src, dst netip.AddrPort) {
	r, c := st.r, st.c
	if truncated || n > len(room) || n > maxPayload {
		c.drops[dropTruncated].Add(1)
		return
	}
	idx := int(dst.Port()) - int(r.cfg.PortMin)
	if idx < 0 || idx >= len(r.ports) {
		c.drops[dropUnknownPort].Add(1)
		return
	}
	ps := &r.ports[idx]
	e := ps.ep.Load()
	if sh := ps.shared.Load(); sh != nil {
		e = pickShared(*sh, src)
	}
	if e == nil || e.local.Addr() != dst.Addr() {
		c.drops[dropUnknownPort].Add(1)
		return
	}
	payload := room[:n]
	rtcp := e.rtcp || (e.mux && n >= 2 && payload[1] >= 200 && payload[1] <= 207)
	ok, final := e.accept(src, st.nowNs, int64(r.cfg.LatchWindow))
	if !ok {
		e.rx.bleedPacket()
		c.drops[dropBleed].Add(1)
		return
	}
	if final {
		r.latchedFinal(e)
	}
	out := e.outRTP
	if rtcp {
		out = e.outRTCP
		e.rx.rtcpPacket(n, st.nowNs)
		st.rtcpPacket(e, src, dst, payload)
	} else if n >= 12 && payload[0]>>6 == 2 && !r.cfg.NoQuality {
		st.rtpPacket(e, n, payload)
	} else {
		e.rx.otherPacket(n, st.nowNs)
	}
	p := out.peer.Load()
	if !p.dst.IsValid() {
		c.drops[dropNoPeer].Add(1)
		return
	}
	out.sent.add(n)
	c.queued.Add(1)
	st.pend[st.npnd] = pending{slot: int32(slot), n: int32(n), out: out, dst: p}
	st.npnd++
}
