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
