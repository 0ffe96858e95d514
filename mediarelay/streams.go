package mediarelay

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

const defaultClockRate = 8000

// AddStream starts forwarding between the two legs of spec. Every relay port in spec must be
// reserved through [Relay.Reserve] and in use by no other stream. Packets may arrive on a leg
// before the other leg's peer is known (early media): they are forwarded once it is, or once
// that peer sent its first packet.
func (r *Relay) AddStream(spec StreamSpec) (*Stream, error) {
	normalize(&spec)
	if err := validateSpec(&spec, r.cfg.PortMin, r.cfg.PortMax); err != nil {
		return nil, fmt.Errorf("add stream of call %q: %w", spec.CallID, err)
	}
	s := &Stream{callID: spec.CallID}
	s.hold.Store(spec.Hold)
	s.setPayloads(&spec)

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("add stream: relay closed")
	}
	for _, l := range []Leg{LegA, LegB} {
		ls := spec.leg(l)
		if err := r.addEndpointLocked(s, l, false, ls); err != nil {
			return nil, fmt.Errorf("add stream of call %q: %w", spec.CallID, err)
		}
		if !ls.Mux {
			if err := r.addEndpointLocked(s, l, true, ls); err != nil {
				return nil, fmt.Errorf("add stream of call %q: %w", spec.CallID, err)
			}
		}
	}
	for _, l := range []Leg{LegA, LegB} {
		other := s.eps[epIndex(1-l, false)]
		otherRTCP := s.eps[epIndex(1-l, true)]
		if otherRTCP == nil {
			otherRTCP = other
		}
		for _, rtcp := range []bool{false, true} {
			if e := s.eps[epIndex(l, rtcp)]; e != nil {
				e.outRTP, e.outRTCP = other, otherRTCP
			}
		}
	}
	for _, e := range s.eps {
		if e != nil {
			r.ports[r.slot(e.local)].install(e)
		}
	}
	r.streams[s] = struct{}{}
	return s, nil
}

func (r *Relay) slot(a netip.AddrPort) int { return int(a.Port() - r.cfg.PortMin) }

// shareable reports whether an endpoint may be installed on the port: it is free, or every
// endpoint on it is a shared one of the same kind.
func (p *portSlot) shareable(shared, rtcp, mux bool) bool {
	cur := p.ep.Load()
	if cur == nil {
		return true
	}
	if !shared {
		return false
	}
	for _, e := range p.endpoints() {
		if !e.shared || e.rtcp != rtcp || e.mux != mux {
			return false
		}
	}
	return true
}

// endpoints returns the endpoints on the port.
func (p *portSlot) endpoints() []*endpoint {
	if sh := p.shared.Load(); sh != nil {
		return *sh
	}
	if e := p.ep.Load(); e != nil {
		return []*endpoint{e}
	}
	return nil
}

// install puts e on the port, alone or beside the endpoints sharing it. Callers hold Relay.mu.
// The list is replaced, never changed, so that packet goroutines read it without locks.
func (p *portSlot) install(e *endpoint) {
	cur := p.endpoints()
	if len(cur) == 0 {
		p.ep.Store(e)
		return
	}
	list := append(slices.Clip(cur), e)
	p.shared.Store(&list)
}

// uninstall takes e off the port. Callers hold Relay.mu.
func (p *portSlot) uninstall(e *endpoint) {
	sh := p.shared.Load()
	if sh == nil {
		p.ep.CompareAndSwap(e, nil)
		return
	}
	list := slices.DeleteFunc(slices.Clone(*sh), func(x *endpoint) bool { return x == e })
	if len(list) > 0 {
		p.ep.Store(list[0])
	}
	if len(list) > 1 {
		p.shared.Store(&list)
	} else {
		p.shared.Store(nil)
	}
}

// clear takes every endpoint off the port (its socket is going).
func (p *portSlot) clear() {
	p.shared.Store(nil)
	p.ep.Store(nil)
}

func (r *Relay) addEndpointLocked(s *Stream, l Leg, rtcp bool, ls *LegSpec) error {
	local, sdp := ls.RTP, ls.Peer
	if rtcp {
		local, sdp = ls.RTCP, ls.peerRTCP()
	}
	slot := &r.ports[r.slot(local)]
	sock := slot.sock.Load()
	switch {
	case sock == nil:
		return fmt.Errorf("relay port %v not reserved", local)
	case sock.local != local:
		return fmt.Errorf("relay port %v reserved on %v", local, sock.local)
	case !slot.shareable(ls.Shared, rtcp, ls.Mux && !rtcp):
		return fmt.Errorf("relay port %v in use by another stream", local)
	}
	e := &endpoint{stream: s, leg: l, rtcp: rtcp, mux: ls.Mux && !rtcp, local: local, shared: ls.Shared, sock: sock}
	e.peer.Store(newPeerState(latchNone, ls.Latch == LatchStrict, ls.Unanswered, sdp, ls.Signal.Unmap(), netip.AddrPort{}))
	s.eps[epIndex(l, rtcp)] = e
	return nil
}

// UpdateStream applies a changed offer or answer (a re-INVITE, or the answer to the offer the
// stream was added with): peers, latch modes, hold and clock rate. The relay ports and rtcp-mux
// must stay as they were (new ports are a new stream). A leg whose SDP address or latch mode
// changed learns its peer anew; the others keep their latch.
func (r *Relay) UpdateStream(s *Stream, spec StreamSpec) error {
	normalize(&spec)
	if err := validateSpec(&spec, r.cfg.PortMin, r.cfg.PortMax); err != nil {
		return fmt.Errorf("update stream of call %q: %w", s.callID, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.removed.Load() {
		return fmt.Errorf("update stream of call %q: removed", s.callID)
	}
	for _, l := range []Leg{LegA, LegB} {
		ls := spec.leg(l)
		rtp, rtcp := s.eps[epIndex(l, false)], s.eps[epIndex(l, true)]
		if rtp.local != ls.RTP || (rtcp == nil) != ls.Mux || (rtcp != nil && rtcp.local != ls.RTCP) {
			return fmt.Errorf("update stream of call %q: leg %v changes relay ports or rtcp-mux", s.callID, l)
		}
	}
	for _, l := range []Leg{LegA, LegB} {
		ls := spec.leg(l)
		strict := ls.Latch == LatchStrict
		for _, rtcp := range []bool{false, true} {
			e := s.eps[epIndex(l, rtcp)]
			if e == nil {
				continue
			}
			sdp := ls.Peer
			if rtcp {
				sdp = ls.peerRTCP()
			}
			if p := e.peer.Load(); p.sdp != sdp || p.strict != strict || p.unanswered != ls.Unanswered || p.signal != ls.Signal.Unmap() {
				e.learnSince.Store(0)
				e.peer.Store(newPeerState(latchNone, strict, ls.Unanswered, sdp, ls.Signal.Unmap(), netip.AddrPort{}))
			}
		}
	}
	s.hold.Store(spec.Hold)
	s.setPayloads(&spec)
	return nil
}

// RemoveStream stops forwarding the stream; its ports stay reserved until their closers are
// closed. The quality of its legs goes to the quality histograms (see [Collector]). Removing a
// stream twice does nothing.
func (r *Relay) RemoveStream(s *Stream) {
	if !r.removeStream(s) {
		return
	}
	if r.cfg.NoQuality && r.cfg.Ended == nil {
		return
	}
	st := s.Stats()
	if !r.cfg.NoQuality {
		r.quality.streamEnded(st)
	}
	if r.cfg.Ended != nil {
		r.cfg.Ended(s, st)
	}
}

func (r *Relay) removeStream(s *Stream) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.removed.Swap(true) {
		return false
	}
	for _, e := range s.eps {
		if e != nil {
			r.ports[r.slot(e.local)].uninstall(e)
		}
	}
	delete(r.streams, s)
	return true
}

// Streams returns the streams being forwarded, in no particular order.
func (r *Relay) Streams() []*Stream {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Stream, 0, len(r.streams))
	for s := range r.streams {
		out = append(out, s)
	}
	return out
}

// Stats returns a snapshot of the stream's counters. It is safe to call at any time, also
// after the stream was removed.
func (s *Stream) Stats() StreamStats {
	st := StreamStats{CallID: s.callID, Hold: s.hold.Load()}
	payloads := s.payloads.Load()
	for _, l := range []Leg{LegA, LegB} {
		ls := &st.A
		if l == LegB {
			ls = &st.B
		}
		for _, rtcp := range []bool{false, true} {
			e := s.eps[epIndex(l, rtcp)]
			if e == nil {
				continue
			}
			e.rx.snapshot(ls, rtcp, payloads)
			sent := e.sent.load()
			ls.Sent.Packets += sent.Packets
			ls.Sent.Bytes += sent.Bytes
			if rtcp {
				ls.SentRTCP = sent
			} else {
				ls.Local = e.local
			}
			if p := e.peer.Load(); p.state != latchNone {
				if rtcp {
					ls.PeerRTCP = p.addr
				} else {
					ls.Peer, ls.Final = p.addr, p.state == latchFinal
				}
			}
		}
	}
	s.rtcp[LegA].snapshot(&st.A)
	s.rtcp[LegB].snapshot(&st.B)
	return st
}

// setPayloads installs the payload types of spec, unless they did not change.
func (s *Stream) setPayloads(spec *StreamSpec) {
	s.secure.Store(spec.Secure)
	if cur := s.payloads.Load(); cur != nil && cur.rate == spec.ClockRate && slices.Equal(cur.types, spec.PayloadTypes) {
		return
	}
	t := newPayloadTable(slices.Clone(spec.PayloadTypes), spec.ClockRate)
	s.payloads.Store(t)
	for pt, c := range t.clock {
		s.clock[pt].Store(c)
	}
}

func normalize(spec *StreamSpec) {
	if spec.ClockRate == 0 {
		spec.ClockRate = defaultClockRate
	}
	for _, l := range []Leg{LegA, LegB} {
		ls := spec.leg(l)
		ls.RTP, ls.RTCP = unmapAddrPort(ls.RTP), unmapAddrPort(ls.RTCP)
		ls.Peer, ls.PeerRTCP = unmapAddrPort(ls.Peer), unmapAddrPort(ls.PeerRTCP)
		if ls.Mux {
			ls.RTCP, ls.PeerRTCP = netip.AddrPort{}, netip.AddrPort{}
		}
	}
}
