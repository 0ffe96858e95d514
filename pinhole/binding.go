package pinhole

import (
	"io"
	"net/netip"
	"sync/atomic"
	"time"
)

// Binding is one entry of the server map: one of sipcar's own addresses (Address) that stands
// for an address on the other side (ForwardTo).
//
// Its identity fields never change, so they are read without locks. Peer, Partner, the counters
// and the liveness are atomics: the media relay reads and writes them per packet while the Map
// changes the tables. A Binding stays readable after its release (Live turns false); its port may
// by then belong to a new Binding, so a caller that keeps one across packets checks Live.
type Binding struct {
	m         *Map
	typ       Type
	faces     Side
	transport string         // canonical SIP transport; "udp" for media
	addr      netip.AddrPort // sipcar's address and port, on side faces
	to        netip.AddrPort // the address it stands for, on the other side
	callID    string
	slot      int32 // pool slot of its port (of the pair for media)
	// source is what the binding counts against: the source of the message that made a sip
	// binding, the source of the call of a media pair's RTP binding; zero when exempt.
	source  netip.Addr
	seq     uint64
	created int64 // tick
	res     io.Closer

	sig *sigState // sip bindings only
	st  *stream   // media bindings only; guarded by m.mu

	live      atomic.Bool
	mux       atomic.Bool
	last      atomic.Int64 // tick of the last traffic; 0: none yet
	pktsSent  atomic.Uint64
	pktsRecv  atomic.Uint64
	bytesSent atomic.Uint64
	bytesRecv atomic.Uint64
	peer      atomic.Pointer[netip.AddrPort]
	partner   atomic.Pointer[Binding]
	quality   atomic.Pointer[Quality]
}

// Quality is the call quality of a media binding's traffic as its owner measures it (the media
// relay's LegQuality): shown as JSON in a [Snapshot] and as its String in the
// session table.
type Quality interface{ String() string }

// sigState is what a sip binding has beyond a media one; guarded by Map.mu.
type sigState struct {
	key             sigKey
	registeredUntil int64 // tick; 0: no registration
	sched           sched
}

// Type returns the binding's type.
func (b *Binding) Type() Type { return b.typ }

// Faces returns the side the binding's address is on: where the packets it receives come from.
func (b *Binding) Faces() Side { return b.faces }

// Transport returns the SIP transport of a sip binding ("udp", "tcp", "tls", "ws", "wss"), or
// "udp" for media.
func (b *Binding) Transport() string { return b.transport }

// Protocol returns the layer-4 protocol the binding's port is held for: "udp" or "tcp".
func (b *Binding) Protocol() string { return network(b.transport) }

// Address returns sipcar's address and port that the binding hands out.
func (b *Binding) Address() netip.AddrPort { return b.addr }

// ForwardTo returns the address the binding stands for: where what reaches Address goes.
func (b *Binding) ForwardTo() netip.AddrPort { return b.to }

// CallID returns the Call-ID of the call the binding belongs to; for a sip binding, that of the
// message that created it.
func (b *Binding) CallID() string { return b.callID }

// Created returns when the binding was made.
func (b *Binding) Created() time.Time { return b.m.timeOf(b.created) }

// Live reports whether the binding is still in the server map.
func (b *Binding) Live() bool { return b.live.Load() }

// Mux reports whether the endpoint the media binding forwards to offered or accepted
// a=rtcp-mux in its latest SDP. The pair keeps its RTCP port either way.
func (b *Binding) Mux() bool { return b.mux.Load() }

// Reservation returns what holds the binding's port: the Closer the [ReserveFunc] returned.
// The Map closes it on release; the caller must not.
func (b *Binding) Reservation() io.Closer { return b.res }

// Peer returns the far end the binding's traffic is with: for media, the source latched from its
// first packets (symmetric RTP); for sip, the remote end of its latest flow. ok is false (ANY)
// until one is set.
func (b *Binding) Peer() (peer netip.AddrPort, ok bool) {
	if p := b.peer.Load(); p != nil {
		return *p, true
	}
	return netip.AddrPort{}, false
}

// SetPeer sets the peer (latches). Setting the peer it already has costs nothing.
func (b *Binding) SetPeer(peer netip.AddrPort) {
	if p := b.peer.Load(); p != nil && *p == peer {
		return
	}
	b.peer.Store(&peer)
	if b.typ != TypeSIP && b.m != nil {
		// A latched media peer is what a standby needs to relay on at once; a sip binding's
		// peer (the session table's last flow) it does not.
		b.m.changedCall(b.callID)
	}
}

// SetQuality records the quality of what the binding received; nil clears it.
func (b *Binding) SetQuality(q Quality) {
	if q == nil {
		b.quality.Store(nil)
		return
	}
	b.quality.Store(&q)
}

// Partner returns, for a media binding, the binding of the same type on the other leg of its
// stream: the port that media arriving here is sent out from (the answer's pair for the offer's,
// and back). It is nil until both legs exist, and after either is released.
func (b *Binding) Partner() *Binding { return b.partner.Load() }

// Received counts a packet of n bytes that reached the binding's address from its peer, and
// refreshes the binding. now is [Map.Now], read once per batch. Safe for concurrent use; it
// allocates nothing.
func (b *Binding) Received(n int, now int64) {
	b.pktsRecv.Add(1)
	b.bytesRecv.Add(uint64(n))
	b.last.Store(now)
}

// Sent counts a packet of n bytes sent from the binding's address to its peer, and refreshes the
// binding. Safe for concurrent use; it allocates nothing.
func (b *Binding) Sent(n int, now int64) {
	b.pktsSent.Add(1)
	b.bytesSent.Add(uint64(n))
	b.last.Store(now)
}

// Counters are a binding's traffic counters: Sent from its address to its peer, Received at its
// address from its peer.
type Counters struct {
	PacketsSent     uint64 `json:"packets_sent"`
	PacketsReceived uint64 `json:"packets_received"`
	BytesSent       uint64 `json:"bytes_sent"`
	BytesReceived   uint64 `json:"bytes_received"`
}

// Counters returns the binding's traffic counters.
func (b *Binding) Counters() Counters {
	return Counters{
		PacketsSent:     b.pktsSent.Load(),
		PacketsReceived: b.pktsRecv.Load(),
		BytesSent:       b.bytesSent.Load(),
		BytesReceived:   b.bytesRecv.Load(),
	}
}

// LastTraffic returns when the binding last carried a packet (or, for sip, a message); ok is
// false if never.
func (b *Binding) LastTraffic() (t time.Time, ok bool) {
	last := b.last.Load()
	if last == 0 {
		return time.Time{}, false
	}
	return b.m.timeOf(last), true
}

// network returns the layer-4 protocol of a canonical SIP transport.
func network(transport string) string {
	if transport == "udp" {
		return "udp"
	}
	return "tcp"
}

// canonicalTransport returns transport in lower case as a constant string, so that a binding
// never keeps a caller's (possibly message-backed) string alive.
func canonicalTransport(transport string) (string, bool) {
	for _, t := range [...]string{"udp", "tcp", "tls", "ws", "wss"} {
		if len(transport) == len(t) && equalFoldASCII(transport, t) {
			return t, true
		}
	}
	return "", false
}

func equalFoldASCII(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// Observe sets a media binding's counters from a count kept elsewhere (the media relay's
// per-stream counters, copied periodically), and refreshes the binding to the last packet's
// time. Counters only grow: a smaller count is ignored.
func (b *Binding) Observe(c Counters, last time.Time) {
	raise := func(v *atomic.Uint64, n uint64) {
		for {
			old := v.Load()
			if n <= old || v.CompareAndSwap(old, n) {
				return
			}
		}
	}
	raise(&b.pktsSent, c.PacketsSent)
	raise(&b.pktsRecv, c.PacketsReceived)
	raise(&b.bytesSent, c.BytesSent)
	raise(&b.bytesRecv, c.BytesReceived)
	if last.IsZero() {
		return
	}
	tick := int64(last.Sub(b.m.epoch)) + 1
	for {
		old := b.last.Load()
		if tick <= old || b.last.CompareAndSwap(old, tick) {
			return
		}
	}
}
