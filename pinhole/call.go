package pinhole

import (
	"net/netip"
	"strconv"
)

// call is a call that holds media pairs; guarded by Map.mu.
type call struct {
	id      string
	source  netip.Addr // counted in Map.perSource when valid
	streams []*stream
	txs     int  // open transactions
	ended   bool // taken out of the table
	// ringUntil is the tick until which its streams live while its INVITE rings (RingCall).
	ringUntil int64
}

// streamKey names a media stream of a call: the SDP body and the m= line.
type streamKey struct {
	part, index int32
}

// stream is one media stream of a call: a leg per side that advertised it, each a pair of
// bindings on the far side. All legs share one deadline, so that media flowing one way keeps
// the other way open (a muted phone sends nothing). Guarded by Map.mu.
//
// A forked call (several early dialogs answering one offer, RFC 3261 section 19.3) has one
// answer leg per dialog: the first in legs, the others in forks, all on the same side, each with
// a pair of its own facing the one offer leg. The 2xx that settles the call keeps one.
type stream struct {
	call  *call
	key   streamKey
	legs  [2]leg // by the side the SDP came from: legs[from-1]
	forks []leg  // further answer legs of a forked call, on the side of the leg whose fork is set
	// spare is the pair reserved with the stream's first offer for its first answer: it faces
	// the offerer and stands for nobody until the answer takes it over.
	spare   leg
	touched int64 // tick of the last signaling that (re)negotiated or touched it
	sched   sched
}

type leg struct {
	rtp, rtcp *Binding
	held      bool   // its latest SDP was sendonly, recvonly or inactive
	fork      string // the answering dialog's tag (MediaRequest.Fork); "" for the offerer's leg
}

func legIndex(from Side) int { return int(from) - 1 }

func (st *stream) held() bool { return st.legs[0].held || st.legs[1].held }

func (st *stream) empty() bool {
	return st.legs[0].rtp == nil && st.legs[1].rtp == nil && len(st.forks) == 0
}

// lastTraffic returns the tick of the latest packet on any binding of the stream, 0 if none.
func (st *stream) lastTraffic() int64 {
	var last int64
	for _, l := range st.allLegs() {
		if l.rtp != nil {
			last = max(last, l.rtp.last.Load(), l.rtcp.last.Load())
		}
	}
	return last
}

// allLegs returns the stream's legs, its forks' answer legs and its answer pair.
func (st *stream) allLegs() []leg {
	if len(st.forks) == 0 && st.spare.rtp == nil {
		return st.legs[:]
	}
	all := append(st.legs[:], st.forks...)
	if st.spare.rtp != nil {
		all = append(all, st.spare)
	}
	return all
}

// forkSide returns the index of the leg that answers for a dialog (its fork is set), or -1.
func (st *stream) forkSide() int {
	for i, l := range st.legs {
		if l.rtp != nil && l.fork != "" {
			return i
		}
	}
	return -1
}

// forkOf returns the position in forks of the answer leg of dialog tag, or -1.
func (st *stream) forkOf(tag string) int {
	for j, f := range st.forks {
		if f.fork == tag {
			return j
		}
	}
	return -1
}

// isFork reports whether an answer from side i for dialog tag is a further fork's: the stream's
// leg from i answers for another dialog.
func (st *stream) isFork(i int, tag string) bool {
	l := st.legs[i]
	return tag != "" && l.rtp != nil && l.fork != "" && l.fork != tag
}

func (c *call) stream(key streamKey) *stream {
	for _, st := range c.streams {
		if st.key == key {
			return st
		}
	}
	return nil
}

// addCallLocked enters a new call, or fails with ErrCallLimit.
func (m *Map) addCallLocked(id string, source netip.Addr) (*call, error) {
	if m.cfg.MaxCalls > 0 && len(m.calls) >= m.cfg.MaxCalls {
		return nil, &limitError{what: "calls in total", limit: m.cfg.MaxCalls}
	}
	source = source.Unmap()
	if source.IsValid() {
		if lim := m.cfg.MaxCallsPerSource; lim > 0 && m.perSource[source] >= lim {
			return nil, &limitError{what: "calls from " + source.String(), limit: lim}
		}
		m.perSource[source]++
	}
	c := &call{id: id, source: source}
	m.calls[id] = c
	m.metrics.calls.Inc()
	return c, nil
}

// deleteCallLocked takes c out of the table; it must hold no streams.
func (m *Map) deleteCallLocked(c *call) {
	if c.ended {
		return
	}
	c.ended = true
	delete(m.calls, c.id)
	m.changedCall(c.id)
	if c.source.IsValid() {
		if n := m.perSource[c.source] - 1; n > 0 {
			m.perSource[c.source] = n
		} else {
			delete(m.perSource, c.source)
		}
	}
	m.metrics.calls.Dec()
}

// deleteIfIdleLocked deletes c once it holds no streams and no transaction is open on it.
func (m *Map) deleteIfIdleLocked(c *call) {
	if len(c.streams) == 0 && c.txs == 0 {
		m.deleteCallLocked(c)
	}
}

func (m *Map) releaseCallLocked(c *call, r Reason, out []released) []released {
	for len(c.streams) > 0 {
		out = m.releaseStreamLocked(c.streams[len(c.streams)-1], r, out)
	}
	// An open transaction finds the call ended and fails to commit.
	m.deleteCallLocked(c)
	return out
}

// releaseStreamLocked releases every leg of st and takes it out of its call.
func (m *Map) releaseStreamLocked(st *stream, r Reason, out []released) []released {
	for len(st.forks) > 0 {
		out = m.releaseForkLocked(st, len(st.forks)-1, r, out)
	}
	out = m.releaseSpareLocked(st, r, out)
	for i := range st.legs {
		out = m.releaseLegLocked(st, i, r, out)
	}
	m.unscheduleLocked(&st.sched)
	c := st.call
	for i, s := range c.streams {
		if s == st {
			last := len(c.streams) - 1
			c.streams[i] = c.streams[last]
			c.streams[last] = nil
			c.streams = c.streams[:last]
			break
		}
	}
	m.deleteIfIdleLocked(c)
	return out
}

// releaseLegLocked releases one leg's pair and unlinks the legs facing it from it.
func (m *Map) releaseLegLocked(st *stream, i int, r Reason, out []released) []released {
	l := st.legs[i]
	if l.rtp == nil {
		return out
	}
	if o := st.legs[1-i]; o.rtp != nil {
		o.rtp.partner.CompareAndSwap(l.rtp, nil)
		o.rtcp.partner.CompareAndSwap(l.rtcp, nil)
	}
	for _, f := range st.forks {
		f.rtp.partner.CompareAndSwap(l.rtp, nil)
		f.rtcp.partner.CompareAndSwap(l.rtcp, nil)
	}
	out = m.unlinkLocked(l, r, out)
	st.legs[i] = leg{}
	return out
}

// releaseSpareLocked releases the answer pair st reserved, if any.
func (m *Map) releaseSpareLocked(st *stream, r Reason, out []released) []released {
	if st.spare.rtp == nil {
		return out
	}
	out = m.unlinkLocked(st.spare, r, out)
	st.spare = leg{}
	return out
}

// retireLocked takes b out of the tables without giving back its port or reservation, which
// a new binding on the same port has taken over (and overwrote b in the port index with).
func (m *Map) retireLocked(b *Binding) {
	if b.live.Swap(false) {
		m.metrics.bindings[b.typ].Dec()
	}
}

// releaseForkLocked releases the answer leg forks[j] of st.
func (m *Map) releaseForkLocked(st *stream, j int, r Reason, out []released) []released {
	out = m.unlinkLocked(st.forks[j], r, out)
	st.forks = append(st.forks[:j], st.forks[j+1:]...)
	return out
}

func (m *Map) unlinkLocked(l leg, r Reason, out []released) []released {
	l.rtp.partner.Store(nil)
	l.rtcp.partner.Store(nil)
	out = m.unpublishLocked(l.rtp, r, out)
	return m.unpublishLocked(l.rtcp, r, out)
}

// linkLocked makes l and the leg facing it (the other side's leg of st) partners.
func linkLocked(st *stream, i int, l leg, primary bool) {
	o := st.legs[1-i]
	if o.rtp == nil {
		return
	}
	l.rtp.partner.Store(o.rtp)
	l.rtcp.partner.Store(o.rtcp)
	if primary {
		o.rtp.partner.Store(l.rtp)
		o.rtcp.partner.Store(l.rtcp)
	}
}

// limitError is a cap reached (ErrCallLimit unless kind says which other), saying which.
type limitError struct {
	what  string
	limit int
	kind  error // nil: ErrCallLimit
}

func (e *limitError) Error() string {
	return e.Unwrap().Error() + ": " + e.what + " at cap " + strconv.Itoa(e.limit)
}

func (e *limitError) Unwrap() error {
	if e.kind == nil {
		return ErrCallLimit
	}
	return e.kind
}
