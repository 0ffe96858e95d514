package policy

import (
	"math"
	"sync"
	"time"
)

// DefaultMaxSources is the number of sources each rate rule tracks unless [Config] says
// otherwise. At the cap a rule's table takes about 1.3 MB (80 bytes per source, measured).
const DefaultMaxSources = 16384

// limiter holds the token buckets of one rate rule, one per source. A source is an IPv4 address
// or an IPv6 /64 (a host given a /64 could otherwise take a fresh address for every request).
//
// A bucket that has filled up again says no more than a missing one, so sweeps delete them:
// memory follows the sources that are being limited, not every source ever seen. The table holds
// at most maxSources buckets. When it is full and a sweep frees nothing (or swept too recently to
// try again), a new source shares the overflow bucket, which has the rule's own rate and burst:
// a flood from many addresses then gets one source's rate between all of them, while the
// sources already in the table keep their own buckets.
type limiter struct {
	perNano    float64 // tokens added per nanosecond
	burst      float64
	maxSources int
	sweepEvery int64 // nanoseconds between sweeps: the time an empty bucket takes to fill, at least 1s

	mu        sync.Mutex // guards the following fields
	buckets   map[sourceKey]bucket
	peak      int // the most buckets held since the map was last rebuilt
	overflow  bucket
	lastSweep int64
	overflows uint64 // requests that took the overflow bucket
}

// bucket is a token bucket; at is when tokens was last brought up to date.
type bucket struct {
	tokens float64
	at     int64
}

func newLimiter(perSecond float64, burst, maxSources int) *limiter {
	perNano := perSecond / 1e9
	fill := int64(math.Ceil(float64(burst) / perNano))
	return &limiter{
		perNano:    perNano,
		burst:      float64(burst),
		maxSources: maxSources,
		sweepEvery: max(fill, int64(time.Second)),
		buckets:    make(map[sourceKey]bucket),
		overflow:   bucket{tokens: float64(burst)},
	}
}

// sourceKey names a source's bucket: an IPv4 address in lo (with the IPv4-mapped prefix, so
// that it differs from every IPv6 /64), or an IPv6 /64 in hi. Integers rather than a netip.Addr
// hash faster and keep the request's strings from escaping through the map.
type sourceKey struct{ hi, lo uint64 }

func sourceKeyOf(k *ipKey) sourceKey {
	if k.family == 4 {
		return sourceKey{lo: 0xffff<<32 | uint64(k.v4)}
	}
	return sourceKey{hi: k.hi}
}

// take takes a token for a request from src at now (nanoseconds on the policy's clock). When
// there is none it returns false and how long until there is one.
func (l *limiter) take(key sourceKey, now int64) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	overflow := false
	if !ok {
		if now-l.lastSweep >= l.sweepEvery {
			l.sweepLocked(now)
		}
		if len(l.buckets) >= l.maxSources {
			b, overflow = l.overflow, true
			l.overflows++
		} else {
			b = bucket{tokens: l.burst, at: now}
		}
	}
	if elapsed := now - b.at; elapsed > 0 {
		b.tokens = min(l.burst, b.tokens+float64(elapsed)*l.perNano)
	}
	b.at = max(b.at, now)
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	if overflow {
		l.overflow = b
	} else {
		l.buckets[key] = b
		l.peak = max(l.peak, len(l.buckets))
	}
	if allowed {
		return true, 0
	}
	return false, time.Duration(math.Ceil((1 - b.tokens) / l.perNano))
}

// sweepLocked deletes the buckets that have filled up again, and rebuilds the map when it holds
// under a quarter of its peak (Go maps do not give memory back on delete).
func (l *limiter) sweepLocked(now int64) {
	l.lastSweep = now
	for k, b := range l.buckets {
		if b.tokens+float64(now-b.at)*l.perNano >= l.burst {
			delete(l.buckets, k)
		}
	}
	if l.peak >= 1024 && len(l.buckets) < l.peak/4 {
		m := make(map[sourceKey]bucket, len(l.buckets))
		for k, b := range l.buckets {
			m[k] = b
		}
		l.buckets, l.peak = m, len(m)
	}
}

// stats returns the number of sources tracked and of requests that took the overflow bucket.
func (l *limiter) stats() (sources int, overflows uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets), l.overflows
}
