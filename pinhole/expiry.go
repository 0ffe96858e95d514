package pinhole

import (
	"container/heap"
	"context"
	"math"
	"time"
)

// never is the deadline of what does not expire (a held stream).
const never = math.MaxInt64

// sched is an expiring thing's place in the Map's deadline queue: a sip binding or a media
// stream. Its at is never later than the thing's true deadline: traffic only pushes a deadline
// back, so a refresh is a lone atomic store and the queue learns of it when the entry comes up.
// Anything that brings a deadline forward reschedules it.
type sched struct {
	at  int64
	idx int // index in the queue; -1 when not queued
	sig *Binding
	st  *stream
}

type schedHeap []*sched

func (h schedHeap) Len() int           { return len(h) }
func (h schedHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h schedHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *schedHeap) Push(x any) {
	s := x.(*sched)
	s.idx = len(*h)
	*h = append(*h, s)
}
func (h *schedHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	s.idx = -1
	return s
}

// deadlineLocked returns when s expires and why.
func (m *Map) deadlineLocked(s *sched) (at int64, r Reason) {
	if b := s.sig; b != nil {
		at = b.last.Load() + int64(m.cfg.SignalingLifetime)
		return max(at, b.sig.registeredUntil), ReasonLifetime
	}
	st := s.st
	if st.held() {
		return never, 0
	}
	at, r = st.touched+int64(m.cfg.MediaSetup), ReasonSetup
	if last := st.lastTraffic(); last != 0 {
		at, r = max(at, last+int64(m.cfg.MediaIdle)), ReasonIdle
	}
	return max(at, st.call.ringUntil), r
}

// scheduleLocked puts s in the queue at its deadline, or takes it out if it has none, and wakes
// Run if s became the earliest.
func (m *Map) scheduleLocked(s *sched) {
	at, _ := m.deadlineLocked(s)
	switch {
	case at == never:
		m.unscheduleLocked(s)
		return
	case s.idx >= 0:
		s.at = at
		heap.Fix(&m.queue, s.idx)
	default:
		s.at = at
		heap.Push(&m.queue, s)
	}
	if s.idx == 0 {
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
}

func (m *Map) unscheduleLocked(s *sched) {
	if s.idx >= 0 {
		heap.Remove(&m.queue, s.idx)
	}
}

// expireLocked releases everything whose deadline is at or before now and returns the earliest
// deadline left.
func (m *Map) expireLocked(now int64, out []released) ([]released, int64) {
	for len(m.queue) > 0 && m.queue[0].at <= now {
		s := m.queue[0]
		at, r := m.deadlineLocked(s)
		switch {
		case at == never:
			heap.Pop(&m.queue)
		case at > now:
			s.at = at
			heap.Fix(&m.queue, 0)
		case s.sig != nil:
			out = m.releaseSigLocked(s.sig, r, out)
		default:
			out = m.releaseStreamLocked(s.st, r, out)
		}
	}
	if len(m.queue) == 0 {
		return out, never
	}
	return out, m.queue[0].at
}

// Run expires bindings at their deadlines until ctx is done, and returns ctx's error. Run it
// once, in a goroutine of the Map's owner; releases it makes are reported through
// Config.OnRelease from this goroutine.
func (m *Map) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := m.Now()
		m.mu.Lock()
		out, next := m.expireLocked(now, nil)
		m.mu.Unlock()
		m.finish(out)

		wait := time.Hour
		if next != never {
			wait = time.Duration(next - now)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case <-m.wake:
		}
	}
}
