package pinhole

import (
	"context"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
)

// TestNoLeak runs a million allocate/release cycles (a tenth under the race detector, which
// makes each cycle twenty times slower) and checks that neither the heap nor the goroutines grew.
func TestNoLeak(t *testing.T) {
	cycles := 1_000_000
	if raceEnabled {
		cycles = 100_000
	}
	m, _ := newTestMap(t, Config{ReserveMedia: nopReserve, ReserveSignaling: nopReserve, MaxCallsPerSource: 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	phone := netip.MustParseAddr("198.18.0.10")
	cycle := func(i int) {
		id := strconv.Itoa(i)
		tx := m.Begin(id, phone)
		p, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")})
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		tx = m.Begin(id, phone)
		tx.Media(MediaRequest{From: Outside, RTP: ap("203.0.113.2:4000")})
		if i%3 == 0 {
			tx.Rollback()
		} else if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		b := m.LookupMedia(p.RTP.Port())
		b.SetPeer(ap("203.0.113.2:4000"))
		b.Received(172, m.Now())
		sig, err := m.Signaling(Inside, "udp", netip.AddrPortFrom(phone, uint16(1024+i%60000)), id)
		if err != nil {
			t.Fatal(err)
		}
		m.Registered(sig, 3600e9)
		m.ReleaseCall(id, ReasonCallEnded)
		m.Release(sig, ReasonReleased)
	}
	for i := range 10_000 { // warm up: maps and slices reach their working size
		cycle(i)
	}
	goroutines, heap := runtime.NumGoroutine(), heapInUse()
	for i := range cycles {
		cycle(i)
	}
	grown := heapInUse() - heap
	t.Logf("%d cycles: heap grew %d bytes, goroutines %d -> %d", cycles, grown, goroutines, runtime.NumGoroutine())
	if grown > 64<<10 {
		t.Errorf("heap grew %d bytes over %d cycles", grown, cycles)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("goroutines %d -> %d", goroutines, n)
	}
	assertEmpty(t, m, nil)
}

func heapInUse() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
