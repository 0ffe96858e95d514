package relay

import (
	"net/netip"
	"sync"
	"time"
)

// throttle limits the messages one source address may send per second (a token bucket per
// address), so that a flooding phone costs sipcar a map lookup per message, not a rewrite and
// bindings. Its table is bounded: past maxSources idle buckets are dropped, and if none is idle
// the newest source shares the limit of an overflow bucket.
type throttle struct {
	rate, burst float64

	mu       sync.Mutex
	buckets  map[netip.Addr]*bucket
	overflow bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

const maxSources = 65536

func newThrottle(perSecond, burst int) *throttle {
	if perSecond <= 0 {
		return nil
	}
	if burst < perSecond {
		burst = perSecond
	}
	return &throttle{rate: float64(perSecond), burst: float64(burst), buckets: make(map[netip.Addr]*bucket)}
}

// allow takes a token for src at now; a nil throttle allows everything.
func (t *throttle) allow(src netip.Addr, now time.Time) bool {
	if t == nil {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buckets[src]
	if b == nil {
		if len(t.buckets) >= maxSources {
			t.evictIdle(now)
		}
		if len(t.buckets) >= maxSources {
			b = &t.overflow
		} else {
			b = &bucket{tokens: t.burst, last: now}
			t.buckets[src] = b
		}
	}
	b.tokens = min(t.burst, b.tokens+now.Sub(b.last).Seconds()*t.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// evictIdle drops the buckets that have refilled: their sources are quiet.
func (t *throttle) evictIdle(now time.Time) {
	full := time.Duration(t.burst / t.rate * float64(time.Second))
	for a, b := range t.buckets {
		if now.Sub(b.last) >= full {
			delete(t.buckets, a)
		}
	}
}
