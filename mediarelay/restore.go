package mediarelay

import (
	"fmt"
	"net/netip"
)

// Latch latches a relay port of leg (rtcp: the RTCP port of a leg that is not muxed) on peer
// for good, as if peer's packets had latched it: packets to the leg's peer go there at once,
// and only its packets are taken. A standby that takes over a stream whose ports had latched
// calls it right after [Relay.AddStream], so that media to a phone behind a NAT flows before
// the phone's next packet and nobody else's is taken meanwhile. It reports no [Events.Latched].
func (r *Relay) Latch(s *Stream, leg Leg, rtcp bool, peer netip.AddrPort) error {
	peer = unmapAddrPort(peer)
	if !peer.IsValid() || leg > LegB {
		return fmt.Errorf("latch stream of call %q leg %v on %v: invalid", s.callID, leg, peer)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.removed.Load() {
		return fmt.Errorf("latch stream of call %q: removed", s.callID)
	}
	e := s.eps[epIndex(leg, rtcp)]
	if e == nil {
		// A muxed leg has no RTCP port of its own: its RTP port carries both.
		return nil
	}
	if peer.Addr().Is4() != e.local.Addr().Unmap().Is4() {
		return fmt.Errorf("latch stream of call %q leg %v on %v: not the family of %v", s.callID, leg, peer, e.local)
	}
	p := e.peer.Load()
	e.peer.Store(p.latched(latchFinal, peer))
	r.latchedFinal(e)
	return nil
}
