package relay

import (
	"net/netip"
	"sync"
	"time"
)

// throttle limits what one key (a source address, or the prefix it is in) may send per second:
// a token bucket per key, so that a flooding source costs sipcar a map lookup per message, not a
// rewrite and bindings.
//
// Its table is bounded with O(1) work per message whatever the sources do: buckets live in two
// generations, and when the current one is full the older is dropped whole and the current
// becomes the older. A key found in the older generation moves to the current. A key whose
// bucket was dropped starts again with a full bucket, which costs a flood of ever new sources
// one burst each: the per-prefix throttle beside the per-address one is what holds those.
type throttle struct {
	rate, burst float64
	perGen      int // buckets per generation

	mu        sync.Mutex // guards the following
	cur, prev map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxSources bounds the buckets of one throttle (two generations of half as many).
const maxSources = 65536

// newThrottle returns a throttle of perSecond with a burst of burst (at least perSecond), or nil
// (no limit) when perSecond is not positive.
func newThrottle(perSecond, burst int) *throttle {
	if perSecond <= 0 {
		return nil
	}
	if burst < perSecond {
		burst = perSecond
	}
	return &throttle{rate: float64(perSecond), burst: float64(burst), perGen: maxSources / 2,
		cur: make(map[netip.Addr]*bucket), prev: make(map[netip.Addr]*bucket)}
}

// allow takes a token for key at now; a nil throttle allows everything.
func (t *throttle) allow(key netip.Addr, now time.Time) bool {
	if t == nil {
		return true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.cur[key]
	if b == nil {
		if b = t.prev[key]; b != nil {
			delete(t.prev, key)
		} else {
			b = &bucket{tokens: t.burst, last: now}
		}
		if len(t.cur) >= t.perGen {
			t.prev, t.cur = t.cur, make(map[netip.Addr]*bucket, t.perGen)
		}
		t.cur[key] = b
	}
	if now.After(b.last) {
		b.tokens = min(t.burst, b.tokens+now.Sub(b.last).Seconds()*t.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// prefixOf returns the network of a for a per-prefix limit: its first bits4 bits for IPv4, bits6
// for IPv6 (a site gets a /64 or more, so rotating addresses within it must not reset a limit).
func prefixOf(a netip.Addr, bits4, bits6 int) netip.Addr {
	a = a.Unmap()
	bits := bits6
	if a.Is4() {
		bits = bits4
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return a
	}
	return p.Addr()
}

// floodGate is the relay's admission of messages by rate: per source address and per prefix. The
// upstream is never throttled (a busy PBX sends for every phone).
type floodGate struct {
	perAddr, perPrefix *throttle
	bits4, bits6       int
	exempt             netip.Addr
}

// admit reports whether a message from src may be handled at now, and if not, the reason
// counted ("flood" for the address's limit, "prefix-flood" for its prefix's).
func (g *floodGate) admit(src netip.Addr, now time.Time) (bool, string) {
	src = src.Unmap()
	if src == g.exempt {
		return true, ""
	}
	if !g.perAddr.allow(src, now) {
		return false, "flood"
	}
	if !g.perPrefix.allow(prefixOf(src, g.bits4, g.bits6), now) {
		return false, "prefix-flood"
	}
	return true, ""
}
