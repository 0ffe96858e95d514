package relay

import (
	"net/netip"
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	th := newThrottle(10, 20)
	a, b := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8")
	now := time.Unix(1000, 0)
	n := 0
	for range 100 {
		if th.allow(a, now) {
			n++
		}
	}
	if n != 20 {
		t.Errorf("a burst of 100 let %d through, want the burst of 20", n)
	}
	if !th.allow(b, now) {
		t.Error("another source was throttled by the first one's flood")
	}
	if th.allow(a, now.Add(50*time.Millisecond)) {
		t.Error("a token came back before its time")
	}
	if !th.allow(a, now.Add(150*time.Millisecond)) {
		t.Error("no token after 150 ms at 10/s")
	}
	var off *throttle
	if !off.allow(a, now) {
		t.Error("a nil throttle refused")
	}
}

// The table stays bounded under a flood of new sources, and a source that keeps sending keeps
// its bucket across a generation change.
func TestThrottleBounded(t *testing.T) {
	th := newThrottle(1, 1)
	th.perGen = 4
	now := time.Unix(1000, 0)
	busy := netip.MustParseAddr("198.51.100.7")
	if !th.allow(busy, now) || th.allow(busy, now) {
		t.Fatal("a burst of 1 did not hold")
	}
	for i := range 1000 {
		th.allow(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), now)
		if i%3 == 0 && th.allow(busy, now) {
			t.Fatalf("after %d new sources the busy source got a token back without waiting", i)
		}
	}
	if n := len(th.cur) + len(th.prev); n > 2*th.perGen {
		t.Errorf("%d buckets held, want at most %d", n, 2*th.perGen)
	}
}

func TestFloodGate(t *testing.T) {
	upstream := netip.MustParseAddr("198.18.0.10")
	g := &floodGate{perAddr: newThrottle(2, 2), perPrefix: newThrottle(5, 5), bits4: 24, bits6: 64, exempt: upstream}
	now := time.Unix(1000, 0)
	passed := 0
	for i := range 20 {
		// Twenty addresses of one /24, two messages each: the prefix's five pass.
		src := netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})
		for range 2 {
			if ok, why := g.admit(src, now); ok {
				passed++
			} else if why != "prefix-flood" {
				t.Fatalf("refused as %q; want prefix-flood", why)
			}
		}
	}
	if passed != 5 {
		t.Errorf("%d messages from one /24 passed, want the prefix's 5", passed)
	}
	if ok, _ := g.admit(netip.MustParseAddr("203.0.114.1"), now); !ok {
		t.Error("another /24 was throttled")
	}
	// IPv6: rotating addresses within one /64 does not reset its limit.
	passed = 0
	for i := range 20 {
		src := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0xc, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i)})
		if ok, _ := g.admit(src, now); ok {
			passed++
		}
	}
	if passed != 5 {
		t.Errorf("%d messages from one /64 passed, want 5", passed)
	}
	for range 100 {
		if ok, _ := g.admit(upstream, now); !ok {
			t.Fatal("the upstream was throttled")
		}
	}
	if ok, why := g.admit(netip.MustParseAddr("203.0.113.1"), now); ok || why != "flood" {
		t.Errorf("a source over its own rate: %v %q; want flood", ok, why)
	}
}
