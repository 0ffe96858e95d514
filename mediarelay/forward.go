package mediarelay

import (
	"encoding/binary"
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

// forward applies the relay's rules to payload, a packet from src to the relay address dst
// that arrived at nowNs (unix nanoseconds; sinceBase is the same since Relay.base): it finds
// the endpoint of dst, applies latching, counts the packet in the stream's statistics and in
// c, and returns the endpoint the packet leaves from and the state of the peer it goes to
// (whose dst is where). It returns nil for a packet to drop, counted in c by reason. This is
// the per-packet path of every platform: it allocates nothing (latching aside, once per
// stream) and takes no lock the control plane holds.
func (r *Relay) forward(c *packetCounters, payload []byte, src, dst netip.AddrPort, nowNs, sinceBase int64) (*endpoint, *peerState) {
	idx := int(dst.Port()) - int(r.cfg.PortMin)
	if idx < 0 || idx >= len(r.ports) {
		c.drops[dropUnknownPort].Add(1)
		return nil, nil
	}
	slot := &r.ports[idx]
	e := slot.ep.Load()
	if sh := slot.shared.Load(); sh != nil {
		e = pickShared(*sh, src)
	}
	if e == nil || e.local.Addr() != dst.Addr() {
		c.drops[dropUnknownPort].Add(1)
		return nil, nil
	}
	n := len(payload)
	rtcp := e.rtcp || (e.mux && n >= 2 && payload[1] >= 200 && payload[1] <= 207)
	if !e.accept(src, nowNs, int64(r.cfg.LatchWindow)) {
		e.rx.bleedPacket()
		c.drops[dropBleed].Add(1)
		return nil, nil
	}
	out := e.outRTP
	if rtcp {
		out = e.outRTCP
		e.rx.rtcpPacket(n, nowNs)
	} else if n >= 12 && payload[0]>>6 == 2 {
		rate := e.stream.clockRate.Load()
		e.rx.rtpPacket(n, binary.BigEndian.Uint16(payload[2:4]), binary.BigEndian.Uint32(payload[4:8]),
			binary.BigEndian.Uint32(payload[8:12]), clockUnits(sinceBase, rate), nowNs)
	} else {
		e.rx.otherPacket(n, nowNs)
	}
	p := out.peer.Load()
	if !p.dst.IsValid() {
		c.drops[dropNoPeer].Add(1)
		return nil, nil
	}
	out.sent.add(n)
	c.queued.Add(1)
	return out, p
}
