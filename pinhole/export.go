package pinhole

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
)

// A replica of the server map (a standby sipcar, see package replica) keeps what each call's
// media pairs and each sip binding are: [Config.OnChange] names what changed, [Map.ExportCall]
// and [Map.ExportSignaling] read it as plain values, and on the standby [Map.RestoreCall] and
// [Map.RestoreSignaling] make the same bindings again, on the same ports, with their latched
// peers. Lifetimes are restored as time left: a registration keeps its expiry, media streams
// start their setup and idle times again, sip bindings their lifetime.

// Change names what changed in the server map (see Config.OnChange): the media pairs of call
// Call, or the sip binding whose own address is Signaling. One of the two is set.
type Change struct {
	Call      string
	Signaling netip.AddrPort
}

func (m *Map) changedCall(id string) {
	if f := m.cfg.OnChange; f != nil && !m.closing.Load() {
		f(Change{Call: id})
	}
}

func (m *Map) changedSig(b *Binding) {
	if f := m.cfg.OnChange; f != nil && !m.closing.Load() {
		f(Change{Signaling: b.addr})
	}
}

// SignalingState is a sip binding as a replica keeps it.
type SignalingState struct {
	// Faces is the side its Address is on; ForwardTo what it stands for, on the other side.
	Faces     Side           `json:"faces"`
	Transport string         `json:"transport"`
	Address   netip.AddrPort `json:"address"`
	ForwardTo netip.AddrPort `json:"forward_to"`
	CallID    string         `json:"call_id,omitempty"`
	// Source is what it counts against (see SignalingRequest.Source); zero when exempt.
	Source netip.Addr `json:"source,omitzero"`
	// RegisteredUntil is when the registration that keeps it ends (margin included); zero when
	// none does.
	RegisteredUntil time.Time `json:"registered_until,omitzero"`
}

// CallState is the media pairs of one call as a replica keeps them.
type CallState struct {
	ID string `json:"id"`
	// Source is the address the call counts against; zero when exempt.
	Source netip.Addr `json:"source,omitzero"`
	// RingUntil is how long its streams live while its INVITE rings (see [Map.RingCall]).
	RingUntil time.Time     `json:"ring_until,omitzero"`
	Streams   []StreamState `json:"streams"`
}

// StreamState is one media stream of a call: the pairs of the legs it has, those of a forked
// call's further answers, and the pair reserved for its first answer.
type StreamState struct {
	Part  int        `json:"part"`
	Index int        `json:"index"`
	Legs  []LegState `json:"legs"`
	Forks []LegState `json:"forks,omitempty"`
	Spare *LegState  `json:"spare,omitempty"`
}

// LegState is one pair: its RTP and RTCP bindings, on side Faces.
type LegState struct {
	Faces Side       `json:"faces"`
	RTP   MediaState `json:"rtp"`
	RTCP  MediaState `json:"rtcp"`
	Mux   bool       `json:"mux,omitempty"`
	Held  bool       `json:"held,omitempty"`
	Fork  string     `json:"fork,omitempty"`
}

// MediaState is one media binding: sipcar's address, what it forwards to (zero for the pair
// reserved for an answer not seen yet) and the peer it latched (zero: ANY).
type MediaState struct {
	Address   netip.AddrPort `json:"address"`
	ForwardTo netip.AddrPort `json:"forward_to,omitzero"`
	Peer      netip.AddrPort `json:"peer,omitzero"`
}

// ErrExists: a restored call or binding is in the server map already.
var ErrExists = errors.New("already in the server map")

// CallIDs returns the IDs of the calls holding media pairs.
func (m *Map) CallIDs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.calls))
	for id := range m.calls {
		ids = append(ids, id)
	}
	return ids
}

// SignalingAddrs returns the own addresses of every sip binding.
func (m *Map) SignalingAddrs() []netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(m.sigs))
	for _, b := range m.sigs {
		out = append(out, b.addr)
	}
	return out
}

// ExportSignaling returns the live sip binding whose own address is addr; false when there is
// none.
func (m *Map) ExportSignaling(addr netip.AddrPort) (SignalingState, bool) {
	b := m.LookupSignaling(addr.Port())
	if b == nil || b.addr != addr {
		return SignalingState{}, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !b.live.Load() {
		return SignalingState{}, false
	}
	s := SignalingState{Faces: b.faces, Transport: b.transport, Address: b.addr, ForwardTo: b.to, CallID: b.callID, Source: b.source}
	if ru := b.sig.registeredUntil; ru != 0 {
		s.RegisteredUntil = m.timeOf(ru).UTC()
	}
	return s, true
}

// ExportCall returns the media pairs of call id; false when the call holds none.
func (m *Map) ExportCall(id string) (CallState, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.calls[id]
	if c == nil || c.ended {
		return CallState{}, false
	}
	cs := CallState{ID: c.id, Source: c.source, Streams: make([]StreamState, 0, len(c.streams))}
	if c.ringUntil != 0 {
		cs.RingUntil = m.timeOf(c.ringUntil).UTC()
	}
	for _, st := range c.streams {
		ss := StreamState{Part: int(st.key.part), Index: int(st.key.index)}
		for _, l := range st.legs {
			if l.rtp != nil {
				ss.Legs = append(ss.Legs, legState(l))
			}
		}
		for _, f := range st.forks {
			ss.Forks = append(ss.Forks, legState(f))
		}
		if st.spare.rtp != nil {
			sp := legState(st.spare)
			ss.Spare = &sp
		}
		cs.Streams = append(cs.Streams, ss)
	}
	return cs, true
}

func legState(l leg) LegState {
	ms := func(b *Binding) MediaState {
		s := MediaState{Address: b.addr, ForwardTo: b.to}
		if p, ok := b.Peer(); ok {
			s.Peer = p
		}
		return s
	}
	return LegState{Faces: l.rtp.faces, RTP: ms(l.rtp), RTCP: ms(l.rtcp), Mux: l.rtp.Mux(), Held: l.held, Fork: l.fork}
}

// tickOf returns the Map's tick of t.
func (m *Map) tickOf(t time.Time) int64 { return int64(t.Sub(m.epoch)) + 1 }

// RestoreSignaling makes the sip binding s describes again, on its own port (reserved as
// [Map.Signaling] reserves one), with the lifetime of a binding that just carried a message and
// its registration's expiry. No cap applies: the binding existed. Errors: ErrInvalid,
// ErrExists, ErrNoPorts (its port is taken or cannot be bound), ErrClosed.
func (m *Map) RestoreSignaling(s SignalingState) (*Binding, error) {
	tr, ok := canonicalTransport(s.Transport)
	addr, to := unmapPort(s.Address), unmapPort(s.ForwardTo)
	slot := int(addr.Port()) - int(m.cfg.SignalingPorts.First)
	if !ok || !s.Faces.Valid() || !m.addrs(s.Faces).has(addr.Addr()) || !m.cfg.SignalingPorts.Contains(addr.Port()) ||
		!to.IsValid() || to.Port() == 0 {
		return nil, fmt.Errorf("restore sip binding %v: %w", s.Address, ErrInvalid)
	}
	key := sigKey{from: s.Faces.Other(), transport: tr, addr: to, v6: addr.Addr().Is6()}
	m.mu.Lock()
	if err := m.restorableSigLocked(key, addr); err != nil {
		m.mu.Unlock()
		return nil, err
	}
	m.mu.Unlock()
	if !m.sigPool.takeSlots(int32(slot)) {
		return nil, fmt.Errorf("restore sip binding %v: port taken: %w", addr, ErrNoPorts)
	}
	res, err := m.cfg.ReserveSignaling(network(tr), addr)
	if err != nil {
		m.sigPool.put(int32(slot))
		return nil, fmt.Errorf("restore sip binding %v: %w: %w", addr, ErrNoPorts, err)
	}
	source := s.Source.Unmap()
	b := &Binding{m: m, typ: TypeSIP, faces: s.Faces, transport: tr, addr: addr, to: to, callID: strings.Clone(s.CallID),
		slot: int32(slot), res: res, source: source, sig: &sigState{key: key}}
	b.sig.sched = sched{idx: -1, sig: b}
	now := m.Now()
	m.mu.Lock()
	if err := m.restorableSigLocked(key, addr); err != nil {
		m.mu.Unlock()
		m.unreserve(m.sigPool, int32(slot), res)
		return nil, err
	}
	m.sigs[key] = b
	if source.IsValid() {
		m.sigsOf[source]++
	}
	m.publishLocked(b, now)
	b.last.Store(now)
	if !s.RegisteredUntil.IsZero() {
		b.sig.registeredUntil = m.tickOf(s.RegisteredUntil)
	}
	m.scheduleLocked(&b.sig.sched)
	m.changedSig(b)
	m.mu.Unlock()
	return b, nil
}

func (m *Map) restorableSigLocked(key sigKey, addr netip.AddrPort) error {
	switch {
	case m.closed:
		return ErrClosed
	case m.sigs[key] != nil:
		return fmt.Errorf("restore sip binding %v for %v: %w", addr, key.addr, ErrExists)
	}
	return nil
}

// restoredPair is a pair of a call being restored: its state and, once reserved, its bindings.
type restoredPair struct {
	s         *LegState
	slot      int32
	rtp, rtcp *Binding
}

// RestoreCall makes the media pairs of call cs again, all or none, on their own ports (reserved
// as allocation reserves them), linked and latched as they were. Its streams start their setup
// time again (and stay held where they were); the media relay's streams are the caller's. No cap
// applies: the call existed. Errors: ErrInvalid, ErrExists, ErrNoPorts (a port is taken or cannot
// be bound), ErrClosed.
func (m *Map) RestoreCall(cs CallState) error {
	if cs.ID == "" {
		return fmt.Errorf("restore call: no Call-ID: %w", ErrInvalid)
	}
	var pairs []*restoredPair
	add := func(l *LegState) error {
		rtp, rtcp := unmapPort(l.RTP.Address), unmapPort(l.RTCP.Address)
		if !l.Faces.Valid() || !m.addrs(l.Faces).has(rtp.Addr()) || rtp.Port()%2 != 0 || !m.cfg.MediaPorts.Contains(rtp.Port()) ||
			rtcp != netip.AddrPortFrom(rtp.Addr(), rtp.Port()+1) || !m.cfg.MediaPorts.Contains(rtcp.Port()) {
			return fmt.Errorf("restore call %q: pair %v: %w", cs.ID, l.RTP.Address, ErrInvalid)
		}
		pairs = append(pairs, &restoredPair{s: l, slot: int32((int(rtp.Port()) - int(m.mediaPool.first)) / 2)})
		return nil
	}
	for i := range cs.Streams {
		st := &cs.Streams[i]
		var sides [2]bool
		for j := range st.Legs {
			if err := add(&st.Legs[j]); err != nil {
				return err
			}
			k := legIndex(st.Legs[j].Faces.Other())
			if sides[k] {
				return fmt.Errorf("restore call %q: stream %d/%d has two legs on one side: %w", cs.ID, st.Part, st.Index, ErrInvalid)
			}
			sides[k] = true
		}
		for j := range st.Forks {
			if err := add(&st.Forks[j]); err != nil {
				return err
			}
		}
		if st.Spare != nil {
			if err := add(st.Spare); err != nil {
				return err
			}
		}
	}
	m.mu.Lock()
	err := m.restorableCallLocked(cs.ID)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	slots := make([]int32, len(pairs))
	for i, p := range pairs {
		slots[i] = p.slot
	}
	if !m.mediaPool.takeSlots(slots...) {
		return fmt.Errorf("restore call %q: a port is taken: %w", cs.ID, ErrNoPorts)
	}
	source := cs.Source.Unmap()
	undo := func() {
		for _, p := range pairs {
			if p.rtp != nil {
				closeReservation(p.rtp.res)
				closeReservation(p.rtcp.res)
			}
			m.mediaPool.put(p.slot)
		}
	}
	for _, p := range pairs {
		rtp := unmapPort(p.s.RTP.Address)
		res, err := m.reservePair(rtp.Addr(), rtp.Port())
		if err != nil {
			undo()
			return fmt.Errorf("restore call %q: %w: %w", cs.ID, ErrNoPorts, err)
		}
		pr := res.(pairReservation)
		mk := func(typ Type, ms MediaState, addr netip.AddrPort, r io.Closer) *Binding {
			b := &Binding{m: m, typ: typ, faces: p.s.Faces, transport: "udp", addr: addr, to: unmapPort(ms.ForwardTo),
				callID: cs.ID, slot: p.slot, res: r}
			if typ == TypeRTP {
				b.source = source
			}
			if ms.Peer.IsValid() {
				peer := unmapPort(ms.Peer)
				b.peer.Store(&peer)
			}
			b.mux.Store(p.s.Mux)
			return b
		}
		p.rtp = mk(TypeRTP, p.s.RTP, rtp, pr[0])
		p.rtcp = mk(TypeRTCP, p.s.RTCP, unmapPort(p.s.RTCP.Address), pr[1])
	}

	now := m.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.restorableCallLocked(cs.ID); err != nil {
		undo()
		return err
	}
	c := &call{id: strings.Clone(cs.ID), source: source}
	m.calls[c.id] = c
	if source.IsValid() {
		m.perSource[source]++
		if m.cfg.MaxPortsPerSource > 0 {
			m.pairsOf[source] += len(pairs)
		}
	}
	m.metrics.calls.Inc()
	if !cs.RingUntil.IsZero() {
		if until := m.tickOf(cs.RingUntil); until > now {
			c.ringUntil = until
		}
	}
	next := 0
	take := func() leg {
		p := pairs[next]
		next++
		return leg{rtp: p.rtp, rtcp: p.rtcp, held: p.s.Held, fork: strings.Clone(p.s.Fork)}
	}
	for i := range cs.Streams {
		ss := &cs.Streams[i]
		st := &stream{call: c, key: streamKey{part: int32(ss.Part), index: int32(ss.Index)}, touched: now}
		st.sched = sched{idx: -1, st: st}
		for range ss.Legs {
			l := take()
			st.legs[legIndex(l.rtp.faces.Other())] = l
		}
		for range ss.Forks {
			st.forks = append(st.forks, take())
		}
		if ss.Spare != nil {
			st.spare = take()
		}
		for _, l := range st.allLegs() {
			l.rtp.st, l.rtcp.st = st, st
			m.publishLocked(l.rtp, now)
			m.publishLocked(l.rtcp, now)
		}
		for j, l := range st.legs {
			if l.rtp != nil {
				linkLocked(st, j, l, true)
			}
		}
		for _, f := range st.forks {
			linkLocked(st, legIndex(f.rtp.faces.Other()), f, false)
		}
		c.streams = append(c.streams, st)
		m.scheduleLocked(&st.sched)
	}
	m.changedCall(c.id)
	return nil
}

func (m *Map) restorableCallLocked(id string) error {
	switch {
	case m.closed:
		return ErrClosed
	case m.calls[id] != nil:
		return fmt.Errorf("restore call %q: %w", id, ErrExists)
	}
	return nil
}
