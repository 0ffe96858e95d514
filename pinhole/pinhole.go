package pinhole

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Errors the Map returns, wrapped with context; test with errors.Is.
var (
	// ErrNoPorts: the port range has no free port that can be bound. The relay answers 503
	// with a Retry-After.
	ErrNoPorts = errors.New("no free ports")
	// ErrCallLimit: the cap on calls in total or per source is reached. The relay answers 503.
	ErrCallLimit = errors.New("too many calls")
	// ErrBindingLimit: the source holds as many sip bindings as Config.MaxBindingsPerSource
	// allows. The relay answers 503.
	ErrBindingLimit = errors.New("too many signaling bindings")
	// ErrPortLimit: the calls of the source hold as many relay ports as
	// Config.MaxPortsPerSource allows. The relay answers 503.
	ErrPortLimit = errors.New("too many relay ports")
	// ErrStreamLimit: an offer has more media streams than Config.MaxStreamsPerCall. The relay
	// answers 488.
	ErrStreamLimit = errors.New("too many media streams")
	// ErrNoDescriptors: a port could not be bound because the process (or the system) is out
	// of file descriptors; it is no shortage of ports, and the relay says so.
	ErrNoDescriptors = errors.New("too many open files")
	// ErrCallEnded: the call was released while a transaction for it was open.
	ErrCallEnded = errors.New("call ended")
	// ErrClosed: the Map is closed.
	ErrClosed = errors.New("server map closed")
	// ErrTxDone: the transaction was already committed or rolled back.
	ErrTxDone = errors.New("transaction already done")
	// ErrInvalid: an argument is out of its domain (an invalid side, address or transport).
	ErrInvalid = errors.New("invalid argument")
)

// maxTries bounds how many random free slots one allocation tries to bind before it gives up:
// when that many fail, the range is full of ports the host uses, or the address is wrong.
const maxTries = 16

// Map is the server map: the table of bindings, the port ranges they are drawn from and their
// lifetimes. All its methods are safe for concurrent use. Bindings expire only while [Map.Run]
// runs; [Map.Close] releases everything.
type Map struct {
	cfg       Config
	epoch     time.Time
	mediaPool *pool
	sigPool   *pool
	// Bindings by port, minus the range's first port: written under mu, read without locks.
	mediaPorts []atomic.Pointer[Binding]
	sigPorts   []atomic.Pointer[Binding]
	metrics    *metrics
	wake       chan struct{} // tells Run the earliest deadline moved
	// closing is set by Close before it releases everything: those releases are sipcar going
	// away, not calls ending, and a replica must keep the calls (see Config.OnChange).
	closing atomic.Bool

	mu        sync.Mutex // guards the following, the calls, streams and sigStates
	closed    bool
	seq       uint64
	sigs      map[sigKey]*Binding
	calls     map[string]*call
	perSource map[netip.Addr]int // calls, by the source that started them
	// sigsOf and pairsOf count, per source, the sip bindings its messages made and the media
	// pairs (allocated or reserved for an allocation under way) of the calls it started.
	sigsOf  map[netip.Addr]int
	pairsOf map[netip.Addr]int
	queue   schedHeap
}

// sigKey names a sip binding: the side and address it stands for, the transport, and the family
// of its own address.
type sigKey struct {
	from      Side
	transport string
	addr      netip.AddrPort
	v6        bool
}

// New returns a Map for cfg. It holds no ports until asked.
func New(cfg Config) (*Map, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("pinhole config: %w", err)
	}
	rnd := &lockedRand{r: cfg.Rand}
	m := &Map{
		cfg:        cfg,
		epoch:      time.Now(),
		mediaPool:  newPool(cfg.MediaPorts, 2, rnd),
		sigPool:    newPool(cfg.SignalingPorts, 1, rnd),
		mediaPorts: make([]atomic.Pointer[Binding], cfg.MediaPorts.Len()),
		sigPorts:   make([]atomic.Pointer[Binding], cfg.SignalingPorts.Len()),
		wake:       make(chan struct{}, 1),
		sigs:       make(map[sigKey]*Binding),
		calls:      make(map[string]*call),
		perSource:  make(map[netip.Addr]int),
		sigsOf:     make(map[netip.Addr]int),
		pairsOf:    make(map[netip.Addr]int),
	}
	if m.metrics, err = newMetrics(cfg.Registerer, m); err != nil {
		return nil, fmt.Errorf("pinhole metrics: %w", err)
	}
	return m, nil
}

// Now returns the Map's clock: a monotonic tick in nanoseconds, never 0, for [Binding.Received]
// and [Binding.Sent]. The media relay reads it once per batch of packets.
func (m *Map) Now() int64 { return int64(time.Since(m.epoch)) + 1 }

func (m *Map) timeOf(tick int64) time.Time { return m.epoch.Add(time.Duration(tick - 1)) }

// Ranges returns the port ranges of media pairs and sip bindings in force.
func (m *Map) Ranges() (media, signaling PortRange) { return m.cfg.MediaPorts, m.cfg.SignalingPorts }

// PortsInUse returns how many media and signalling ports are reserved now (each held by a socket
// when the reservation hooks bind real ones).
func (m *Map) PortsInUse() (media, signaling int) {
	_, mu := m.mediaPool.usage()
	_, su := m.sigPool.usage()
	return mu * int(m.mediaPool.step), su * int(m.sigPool.step)
}

// Own reports whether a is one of sipcar's own addresses on side.
func (m *Map) Own(side Side, a netip.Addr) bool { return m.addrs(side).has(a) }

// LocalAddr returns sipcar's address on side of like's family (or the side's other address when
// it has none of that family): what an address without a port (SDP o=, Via maddr) that stands
// for like becomes on side.
func (m *Map) LocalAddr(side Side, like netip.Addr) netip.Addr { return m.addrs(side).pick(like) }

func (m *Map) addrs(side Side) Addrs {
	if side == Inside {
		return m.cfg.Inside
	}
	return m.cfg.Public
}

// LookupMedia returns the live media binding whose address has port, or nil. It is the media
// relay's per-packet lookup: lock-free, no allocation. A port is in use on one side at a time,
// so the port alone names the binding; the caller may compare [Binding.Address].
func (m *Map) LookupMedia(port uint16) *Binding {
	i := int(port) - int(m.cfg.MediaPorts.First)
	if uint(i) >= uint(len(m.mediaPorts)) {
		return nil
	}
	return m.mediaPorts[i].Load()
}

// LookupSignaling returns the live sip binding whose address has port, or nil, without
// refreshing it.
func (m *Map) LookupSignaling(port uint16) *Binding {
	i := int(port) - int(m.cfg.SignalingPorts.First)
	if uint(i) >= uint(len(m.sigPorts)) {
		return nil
	}
	return m.sigPorts[i].Load()
}

// Signaling returns the sip binding that stands for addr, an address on side from reached over
// transport, creating it if there is none: sipcar's address on from.Other() (of addr's family
// when that side has one) and a port of its own, one per address and transport. It refreshes the
// binding. callID names the call of a binding it creates. A binding made here counts against no
// source; see [Map.SignalingFor]. Errors: ErrInvalid, ErrNoPorts, ErrNoDescriptors, ErrClosed.
func (m *Map) Signaling(from Side, transport string, addr netip.AddrPort, callID string) (*Binding, error) {
	return m.SignalingFor(SignalingRequest{From: from, Transport: transport, Addr: addr, CallID: callID})
}

// SignalingRequest asks for the sip binding of one address: what [Map.Signaling] takes, and
// what the binding counts against and whom it is handed to.
type SignalingRequest struct {
	From      Side
	Transport string
	Addr      netip.AddrPort
	CallID    string
	// Source is the address the message that asks came from: a binding made for it counts
	// against it until released, and fails with ErrBindingLimit once it holds
	// Config.MaxBindingsPerSource. The zero Addr is exempt (the relay's upstream).
	Source netip.Addr
	// Toward is an address of the peer the binding is handed to: the binding is sipcar's address
	// of that peer's family (an IPv6 phone gets IPv6 bindings whatever family they stand for).
	// The zero Addr means Addr's family. One address gets a binding per family it is handed in.
	Toward netip.Addr
}

// SignalingFor is [Map.Signaling] for req (see [SignalingRequest]). A binding that exists is
// returned whoever asks.
func (m *Map) SignalingFor(req SignalingRequest) (*Binding, error) {
	from, transport, addr, callID, source := req.From, req.Transport, req.Addr, req.CallID, req.Source
	like := req.Toward
	if !like.IsValid() {
		like = addr.Addr()
	}
	tr, ok := canonicalTransport(transport)
	if !ok || !from.Valid() || !addr.Addr().IsValid() || addr.Port() == 0 {
		return nil, fmt.Errorf("sip binding for %s %s %v: %w", from, transport, addr, ErrInvalid)
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	local := m.addrs(from.Other()).pick(like)
	key := sigKey{from: from, transport: tr, addr: addr, v6: local.Is6()}
	now := m.Now()

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	if b := m.sigs[key]; b != nil {
		b.last.Store(now) // under the lock, so that Run cannot expire it before we return
		m.mu.Unlock()
		return b, nil
	}
	source = source.Unmap()
	if lim := m.cfg.MaxBindingsPerSource; source.IsValid() && lim > 0 {
		if m.sigsOf[source] >= lim {
			m.mu.Unlock()
			m.metrics.limitedSig.Inc()
			return nil, fmt.Errorf("sip binding for %s %s %v: %w", from, tr, addr,
				&limitError{what: "signaling bindings of " + source.String(), limit: lim, kind: ErrBindingLimit})
		}
		m.sigsOf[source]++ // held while the port is bound; given back below if that fails
	} else {
		source = netip.Addr{}
	}
	m.mu.Unlock()

	// Bind outside the lock: it is a system call, and lookups must not wait for it.
	slot, res, err := m.allocate(m.sigPool, local, TypeSIP, tr)
	if err != nil {
		m.giveBackSig(source)
		m.metrics.failed(TypeSIP, err)
		return nil, fmt.Errorf("sip binding for %s %s %v: %w", from, tr, addr, err)
	}
	b := &Binding{
		m:         m,
		typ:       TypeSIP,
		faces:     from.Other(),
		transport: tr,
		addr:      netip.AddrPortFrom(local, m.sigPool.port(slot)),
		to:        addr,
		callID:    strings.Clone(callID),
		slot:      slot,
		res:       res,
		source:    source,
		sig:       &sigState{key: key},
	}
	b.sig.sched = sched{idx: -1, sig: b}

	m.mu.Lock()
	other := m.sigs[key]
	if m.closed || other != nil {
		// Closed meanwhile, or another goroutine made the same binding first.
		if other != nil {
			other.last.Store(now)
		}
		m.mu.Unlock()
		m.giveBackSig(source)
		m.unreserve(m.sigPool, slot, res)
		if other == nil {
			return nil, ErrClosed
		}
		return other, nil
	}
	m.sigs[key] = b
	m.publishLocked(b, now)
	b.last.Store(now)
	m.scheduleLocked(&b.sig.sched)
	m.changedSig(b)
	m.mu.Unlock()
	return b, nil
}

// Resolve returns the live sip binding whose address is local, one of sipcar's addresses on
// side (where the message that names it came from), and refreshes it: its ForwardTo is where a
// message for local goes. The caller checks the binding's Transport if it cares.
func (m *Map) Resolve(side Side, local netip.AddrPort) (*Binding, bool) {
	b := m.LookupSignaling(local.Port())
	if b == nil || b.faces != side || b.addr.Addr() != local.Addr().Unmap() {
		return nil, false
	}
	b.last.Store(m.Now())
	return b, true
}

// Registered extends a sip binding to live until a registration of expires ends, plus
// RegisterMargin, however long since its last message; expires <= 0 (a de-registration) returns
// it to the ordinary lifetime.
func (m *Map) Registered(b *Binding, expires time.Duration) {
	if b == nil || b.typ != TypeSIP {
		return
	}
	now := m.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if !b.live.Load() {
		return
	}
	b.last.Store(now)
	b.sig.registeredUntil = 0
	if expires > 0 {
		b.sig.registeredUntil = now + int64(expires+m.cfg.RegisterMargin)
	}
	m.scheduleLocked(&b.sig.sched)
	m.changedSig(b)
}

// TouchCall tells the Map that the call's signaling is alive: its media streams' setup time
// (MediaSetup until a first packet) starts again, so that a call that rings long keeps its pairs.
// The relay calls it for every message of a call.
func (m *Map) TouchCall(callID string) {
	now := m.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.calls[callID]; c != nil {
		for _, st := range c.streams {
			st.touched = now
		}
	}
}

// RingCall tells the Map that the call's INVITE rings: its media streams live at least d from
// now whatever their setup time says, so that a call ringing for minutes keeps the pairs its
// answer and early media need, and the server map shows the time it really has left. d <= 0 ends
// that (the INVITE got its final response).
func (m *Map) RingCall(callID string, d time.Duration) {
	until := int64(0)
	if d > 0 {
		until = m.Now() + int64(d)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.calls[callID]
	if c == nil || c.ringUntil == until {
		return
	}
	c.ringUntil = until
	for _, st := range c.streams {
		m.scheduleLocked(&st.sched)
	}
	m.changedCall(callID)
}

// AnswerPair returns the pair reserved with the offer of the call's stream (part, index) for its
// first answer, while no answer took it over: the media relay forwards the answerer's early
// packets (sent before its answer reached sipcar) through it.
func (m *Map) AnswerPair(callID string, part, index int) (Pair, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.calls[callID]
	if c == nil {
		return Pair{}, false
	}
	st := c.stream(streamKey{part: int32(part), index: int32(index)})
	if st == nil || st.spare.rtp == nil {
		return Pair{}, false
	}
	return pairOf(st.spare.rtp), true
}

// ReleaseCall releases every media pair of the call at once (BYE and its 200, CANCEL, a final
// error response to the initial INVITE) and reports whether the call had any. Its ports are
// free when it returns. The call's sip bindings are shared with other calls and live on.
func (m *Map) ReleaseCall(callID string, r Reason) bool {
	r = r.orReleased()
	m.mu.Lock()
	c := m.calls[callID]
	var out []released
	if c != nil {
		out = m.releaseCallLocked(c, r, out)
	}
	m.mu.Unlock()
	m.finish(out)
	return c != nil
}

// Release releases b: a sip binding alone, or the media pair b is part of (both ports of that
// leg of its stream). Its ports are free when it returns.
func (m *Map) Release(b *Binding, r Reason) {
	if b == nil {
		return
	}
	r = r.orReleased()
	var out []released
	m.mu.Lock()
	if b.live.Load() {
		if b.typ == TypeSIP {
			out = m.releaseSigLocked(b, r, out)
		} else if st := b.st; st != nil {
			for i := range st.legs {
				if st.legs[i].rtp == b || st.legs[i].rtcp == b {
					out = m.releaseLegLocked(st, i, r, out)
					promoteForkLocked(st, i)
				}
			}
			for j, f := range st.forks {
				if f.rtp == b || f.rtcp == b {
					out = m.releaseForkLocked(st, j, r, out)
					break
				}
			}
			if st.spare.rtp == b || st.spare.rtcp == b {
				out = m.releaseSpareLocked(st, r, out)
			}
			if st.empty() {
				out = m.releaseStreamLocked(st, r, out)
			}
		}
	}
	m.mu.Unlock()
	m.finish(out)
}

// Close releases every binding (ReasonClosed), closing every reservation, and makes further
// allocations fail with ErrClosed. It is safe to call more than once. Stop [Map.Run] first or
// after; either order is safe.
func (m *Map) Close() error {
	var out []released
	m.closing.Store(true)
	m.mu.Lock()
	m.closed = true
	for _, b := range m.sigs {
		out = m.releaseSigLocked(b, ReasonClosed, out)
	}
	for _, c := range m.calls {
		out = m.releaseCallLocked(c, ReasonClosed, out)
	}
	m.mu.Unlock()
	m.finish(out)
	return nil
}

// allocate takes a random free slot of p and reserves its port(s) on addr, trying other slots
// while binding fails. Slots that failed go back to the pool.
func (m *Map) allocate(p *pool, addr netip.Addr, typ Type, transport string) (slot int32, res io.Closer, err error) {
	var failed [maxTries]int32
	nfailed := 0
	defer func() {
		for _, s := range failed[:nfailed] {
			p.put(s)
		}
	}()
	var lastErr error
	for range maxTries {
		s, ok := p.take()
		if !ok {
			break
		}
		port := p.port(s)
		if typ == TypeSIP {
			res, err = m.cfg.ReserveSignaling(network(transport), netip.AddrPortFrom(addr, port))
		} else {
			res, err = m.reservePair(addr, port)
		}
		if err == nil {
			return s, res, nil
		}
		lastErr = err
		failed[nfailed] = s
		nfailed++
	}
	if lastErr != nil {
		if errors.Is(lastErr, syscall.EMFILE) || errors.Is(lastErr, syscall.ENFILE) {
			// Out of descriptors, not of ports: say so, or operators chase the wrong limit.
			return 0, nil, fmt.Errorf("%w: binding %v in %v: %w", ErrNoDescriptors, addr, m.rangeOf(p), lastErr)
		}
		return 0, nil, fmt.Errorf("%w in %v on %v: %w", ErrNoPorts, m.rangeOf(p), addr, lastErr)
	}
	return 0, nil, fmt.Errorf("%w in %v", ErrNoPorts, m.rangeOf(p))
}

func (m *Map) rangeOf(p *pool) PortRange {
	if p == m.mediaPool {
		return m.cfg.MediaPorts
	}
	return m.cfg.SignalingPorts
}

// reservePair reserves an RTP port and the RTCP port above it; the result closes both.
func (m *Map) reservePair(addr netip.Addr, port uint16) (io.Closer, error) {
	rtp, err := m.cfg.ReserveMedia("udp", netip.AddrPortFrom(addr, port))
	if err != nil {
		return nil, err
	}
	rtcp, err := m.cfg.ReserveMedia("udp", netip.AddrPortFrom(addr, port+1))
	if err != nil {
		closeReservation(rtp)
		return nil, err
	}
	return pairReservation{rtp, rtcp}, nil
}

// pairReservation holds the two ports of a media pair until the Map splits it between the pair's
// bindings.
type pairReservation [2]io.Closer

func (p pairReservation) Close() error {
	return errors.Join(closeReservation(p[0]), closeReservation(p[1]))
}

func closeReservation(c io.Closer) error {
	if c == nil {
		return nil
	}
	return c.Close()
}

// unreserve gives back a slot whose bindings were never published.
func (m *Map) unreserve(p *pool, slot int32, res io.Closer) {
	closeReservation(res)
	p.put(slot)
}

// publishLocked makes b visible in the tables' port index and counts it.
func (m *Map) publishLocked(b *Binding, now int64) {
	m.seq++
	b.seq = m.seq
	b.created = now
	b.live.Store(true)
	if b.typ == TypeSIP {
		m.sigPorts[int(b.addr.Port())-int(m.cfg.SignalingPorts.First)].Store(b)
	} else {
		m.mediaPorts[int(b.addr.Port())-int(m.cfg.MediaPorts.First)].Store(b)
	}
	m.metrics.bindings[b.typ].Inc()
}

// released is a binding taken out of the tables whose port is yet to be given back.
type released struct {
	b *Binding
	r Reason
}

// unpublishLocked takes b out of the port index.
func (m *Map) unpublishLocked(b *Binding, r Reason, out []released) []released {
	if !b.live.Swap(false) {
		return out
	}
	if b.typ == TypeSIP {
		m.sigPorts[int(b.addr.Port())-int(m.cfg.SignalingPorts.First)].Store(nil)
		m.changedSig(b)
	} else {
		m.mediaPorts[int(b.addr.Port())-int(m.cfg.MediaPorts.First)].Store(nil)
		m.changedCall(b.callID)
	}
	m.metrics.bindings[b.typ].Dec()
	return append(out, released{b, r})
}

func (m *Map) releaseSigLocked(b *Binding, r Reason, out []released) []released {
	if m.sigs[b.sig.key] == b {
		delete(m.sigs, b.sig.key)
	}
	if b.live.Load() {
		decrement(m.sigsOf, b.source)
	}
	m.unscheduleLocked(&b.sig.sched)
	return m.unpublishLocked(b, r, out)
}

// giveBackSig returns the count SignalingFor took for a binding it did not make.
func (m *Map) giveBackSig(source netip.Addr) {
	if source.IsValid() {
		m.mu.Lock()
		decrement(m.sigsOf, source)
		m.mu.Unlock()
	}
}

// decrement takes one from a per-source count, deleting it at zero; the zero Addr is not
// counted.
func decrement(counts map[netip.Addr]int, source netip.Addr) {
	if !source.IsValid() {
		return
	}
	if n := counts[source] - 1; n > 0 {
		counts[source] = n
	} else {
		delete(counts, source)
	}
}

// finish closes the reservations of released bindings, gives their ports back and tells the
// owner, without the lock.
func (m *Map) finish(out []released) {
	for _, x := range out {
		closeReservation(x.b.res)
	}
	for _, x := range out {
		switch x.b.typ {
		case TypeSIP:
			m.sigPool.put(x.b.slot)
		case TypeRTP:
			// The pair's slot goes back with its RTP binding, after both were closed above.
			m.mediaPool.put(x.b.slot)
			m.givePair(x.b.source)
		}
		m.metrics.expirations[x.r].Inc()
	}
	if m.cfg.OnRelease != nil {
		for _, x := range out {
			m.cfg.OnRelease(x.b, x.r)
		}
	}
}
