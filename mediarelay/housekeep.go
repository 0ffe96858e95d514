package mediarelay

import (
	"context"
	"net/netip"
	"time"
)

// streamHousekeeping is the housekeeping goroutine's own state of a stream; nothing else
// touches it.
type streamHousekeeping struct {
	activity     uint64    // packets accepted on any port, at the last sweep
	reported     uint64    // activity at the last Traffic report
	lastActive   time.Time // when housekeeping last saw activity grow (or the stream was new)
	idleReported bool
	eps          [4]endpointHousekeeping
}

type endpointHousekeeping struct {
	tentative      *peerState // the tentative latch whose window is running
	tentativeSince time.Time
	reported       netip.AddrPort // the last peer reported as latched
}

// housekeep sweeps every stream at the sweep interval until ctx ends: it closes latch windows,
// reports latched peers and idle streams. Time here is the time package's; packets are not
// timed by it, so the sweep's own observations define when a stream went quiet. Between
// sweeps, it hands to the kernel path the streams whose legs latched for good when the packet
// path wakes it.
func (r *Relay) housekeep(ctx context.Context) {
	t := time.NewTicker(r.cfg.sweepInterval())
	defer t.Stop()
	var streams []*Stream
	var events []event
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			streams, events = r.sweep(now, streams[:0], events[:0])
		case <-r.kernelWake():
			streams = r.handOver(time.Now(), streams[:0])
		}
	}
}

// handOver syncs with the kernel path the streams marked for it (Stream.handover); it returns
// its buffer for reuse.
func (r *Relay) handOver(now time.Time, streams []*Stream) []*Stream {
	r.mu.Lock()
	for s := range r.streams {
		if s.handover.Load() {
			streams = append(streams, s)
		}
	}
	r.mu.Unlock()
	for _, s := range streams {
		if s.handover.Swap(false) {
			r.kernelSync(s, now)
		}
	}
	clear(streams)
	return streams
}

type event struct {
	s       *Stream
	leg     Leg
	rtcp    bool
	peer    netip.AddrPort
	idle    time.Duration // > 0: an idle report
	traffic bool          // a Traffic report
}

// sweep looks at every stream once, then delivers the events it found; it returns its
// buffers for reuse.
func (r *Relay) sweep(now time.Time, streams []*Stream, events []event) ([]*Stream, []event) {
	r.mu.Lock()
	for s := range r.streams {
		streams = append(streams, s)
	}
	r.mu.Unlock()
	r.kernelSweep(now)
	for _, s := range streams {
		hk := &s.hk
		var activity uint64
		for i, e := range s.eps {
			if e == nil {
				continue
			}
			activity += e.rx.activity() + e.kernelActivity()
			eh := &hk.eps[i]
			p := e.peer.Load()
			if p.state == latchTentative {
				if eh.tentative != p {
					eh.tentative, eh.tentativeSince = p, now
				} else if now.Sub(eh.tentativeSince) >= r.cfg.LatchWindow {
					e.finalize(p)
					eh.tentative = nil
				}
			}
			if p.state == latchNone {
				eh.reported = netip.AddrPort{} // relearning: report the next latch
			} else if p.addr != eh.reported {
				eh.reported = p.addr
				events = append(events, event{s: s, leg: e.leg, rtcp: e.rtcp, peer: p.addr})
			}
		}
		s.handover.Store(false)
		r.kernelSync(s, now) // hand what latched to the kernel
		if activity != hk.reported {
			hk.reported = activity
			events = append(events, event{s: s, traffic: true})
		}
		switch {
		case hk.lastActive.IsZero() || activity != hk.activity || s.hold.Load():
			hk.activity, hk.lastActive, hk.idleReported = activity, now, false
		case !hk.idleReported && now.Sub(hk.lastActive) >= r.cfg.IdleTimeout:
			hk.idleReported = true
			events = append(events, event{s: s, idle: now.Sub(hk.lastActive)})
		}
	}
	if ev := r.cfg.Events; ev != nil {
		for _, e := range events {
			if e.s.removed.Load() {
				continue
			}
			switch {
			case e.traffic:
				ev.Traffic(e.s, e.s.Stats())
			case e.idle > 0:
				ev.Idle(e.s, e.idle)
			default:
				ev.Latched(e.s, e.leg, e.rtcp, e.peer)
			}
		}
	}
	for i := range streams {
		streams[i] = nil
	}
	for i := range events {
		events[i] = event{}
	}
	return streams, events
}
