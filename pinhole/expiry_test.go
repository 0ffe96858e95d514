package pinhole

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"
)

// runMap starts m.Run in the bubble and stops it when the test ends.
func runMap(t *testing.T, m *Map) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	})
}

// after advances the bubble's clock by d and lets the Map's goroutine act.
func after(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func TestSignalingLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, f := newTestMap(t, Config{})
		var rel releases
		m.cfg.OnRelease = rel.record
		runMap(t, m)
		b, _ := m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "c")

		after(2*time.Minute - time.Nanosecond)
		if !b.Live() {
			t.Fatal("expired before 2 min")
		}
		after(time.Nanosecond)
		if b.Live() || f.held() != 0 || rel.count(ReasonLifetime) != 1 {
			t.Fatalf("at 2 min: live %v, held %d, lifetime releases %d", b.Live(), f.held(), rel.count(ReasonLifetime))
		}

		// Each message refreshes: Signal, Resolve, traffic.
		b, _ = m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "c")
		after(100 * time.Second)
		m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "c")
		after(100 * time.Second)
		m.Resolve(Outside, b.Address())
		after(100 * time.Second)
		b.Received(500, m.Now())
		after(2*time.Minute - time.Nanosecond)
		if !b.Live() {
			t.Fatal("refreshed binding expired early")
		}
		after(time.Nanosecond)
		if b.Live() {
			t.Fatal("refreshed binding outlived its last message by 2 min")
		}
		assertEmpty(t, m, f)
	})
}

func TestRegisterLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, f := newTestMap(t, Config{})
		runMap(t, m)
		b, _ := m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "reg")
		m.Registered(b, time.Hour)

		after(time.Hour + DefaultRegisterMargin - time.Nanosecond)
		if !b.Live() {
			t.Fatal("registered binding expired before its registration (+ margin)")
		}
		if left := leftOf(m, b); left != 1 {
			t.Errorf("Left-Time = %d s, want 1", left)
		}
		after(time.Nanosecond)
		if b.Live() {
			t.Fatal("registered binding outlived its registration + margin")
		}

		// Re-registration extends; de-registration returns to the 2 min lifetime.
		b, _ = m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "reg")
		m.Registered(b, time.Hour)
		after(30 * time.Minute)
		m.Registered(b, 0)
		after(2*time.Minute - time.Nanosecond)
		if !b.Live() {
			t.Fatal("de-registered binding expired early")
		}
		after(time.Nanosecond)
		if b.Live() {
			t.Fatal("de-registered binding kept its registration's lifetime")
		}
		assertEmpty(t, m, f)
	})
}

func leftOf(m *Map, b *Binding) int64 {
	for _, e := range m.Snapshot().Bindings {
		if e.Address == b.Address() && e.LeftSeconds != nil {
			return *e.LeftSeconds
		}
	}
	return -1
}

func TestMediaSetupAndIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, f := newTestMap(t, Config{})
		var rel releases
		m.cfg.OnRelease = rel.record
		runMap(t, m)

		// No packet: gone at exactly 50 s.
		p := offer(t, m, "silent", Inside, "198.18.0.10:3000")
		rtp := m.LookupMedia(p.RTP.Port())
		after(50*time.Second - time.Nanosecond)
		if !rtp.Live() {
			t.Fatal("expired before 50 s")
		}
		after(time.Nanosecond)
		if rtp.Live() || rel.count(ReasonSetup) != 2 {
			t.Fatalf("at 50 s: live %v, setup releases %d (want rtp and rtcp)", rtp.Live(), rel.count(ReasonSetup))
		}

		// Packets: each refreshes; gone exactly 60 s after the last.
		p = offer(t, m, "talk", Inside, "198.18.0.10:3000")
		rtp = m.LookupMedia(p.RTP.Port())
		after(10 * time.Second)
		rtp.Received(172, m.Now())
		after(40 * time.Second) // past the setup time: the packet moved the stream to idle rules
		rtcp := m.LookupMedia(p.RTCPPort)
		rtcp.Sent(80, m.Now())
		after(60*time.Second - time.Nanosecond)
		if !rtp.Live() {
			t.Fatal("expired before 60 s idle")
		}
		after(time.Nanosecond)
		if rtp.Live() || rtcp.Live() || rel.count(ReasonIdle) != 2 {
			t.Fatalf("after 60 s idle: live %v %v, idle releases %d", rtp.Live(), rtcp.Live(), rel.count(ReasonIdle))
		}
		if m.Snapshot().Calls != 0 {
			t.Errorf("call left after its last stream expired")
		}
		assertEmpty(t, m, f)
	})
}

func TestMediaOneWayKeepsBothLegs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, f := newTestMap(t, Config{})
		runMap(t, m)
		p := offer(t, m, "c", Inside, "198.18.0.10:3000")
		q := offer(t, m, "c", Outside, "203.0.113.2:4000")
		muted := m.LookupMedia(q.RTP.Port())
		talking := m.LookupMedia(p.RTP.Port())
		for range 10 {
			after(30 * time.Second)
			talking.Received(172, m.Now())
		}
		if !muted.Live() {
			t.Fatal("the leg of a muted phone expired while the other way flows")
		}
		m.ReleaseCall("c", ReasonCallEnded)
		assertEmpty(t, m, f)
	})
}

func TestTouchCallRestartsSetup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, f := newTestMap(t, Config{})
		runMap(t, m)
		p := offer(t, m, "ringing", Inside, "198.18.0.10:3000")
		rtp := m.LookupMedia(p.RTP.Port())
		after(40 * time.Second) // 180 Ringing, 40 s later
		m.TouchCall("ringing")
		after(50*time.Second - time.Nanosecond)
		if !rtp.Live() {
			t.Fatal("expired though signaling touched it 50 s ago")
		}
		after(time.Nanosecond)
		if rtp.Live() {
			t.Fatal("outlived the setup time after the last touch")
		}
		assertEmpty(t, m, f)
	})
}

func TestHeldStreamKeepsPair(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, f := newTestMap(t, Config{})
		runMap(t, m)
		tx := m.Begin("c", netip.Addr{})
		p, _ := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000"), Held: true}) // a=sendonly
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		rtp := m.LookupMedia(p.RTP.Port())
		after(3 * time.Hour)
		if !rtp.Live() {
			t.Fatal("held stream expired")
		}
		var buf bytes.Buffer
		m.Snapshot().WriteServerMap(&buf)
		if want := "Left-Time: --:--:--"; !bytes.Contains(buf.Bytes(), []byte(want)) {
			t.Errorf("server map of a held stream:\n%s\nwant %q", buf.String(), want)
		}

		// Resumed (sendrecv, same address): the pair stays and the clock starts again.
		offer(t, m, "c", Inside, "198.18.0.10:3000")
		if m.LookupMedia(p.RTP.Port()) != rtp {
			t.Fatal("resume changed the pair")
		}
		after(50 * time.Second)
		if rtp.Live() {
			t.Fatal("resumed stream without packets outlived the setup time")
		}

		// Held without a pair request (c=0.0.0.0): Hold keeps the existing pair.
		p = offer(t, m, "c2", Inside, "198.18.0.10:3000")
		rtp = m.LookupMedia(p.RTP.Port())
		tx = m.Begin("c2", netip.Addr{})
		tx.Hold(Inside, 0, 0)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		after(time.Hour)
		if !rtp.Live() {
			t.Fatal("stream held by c=0.0.0.0 expired")
		}
		m.ReleaseCall("c2", ReasonCallEnded)
		assertEmpty(t, m, f)
	})
}

func TestLeftTimeCountsDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, _ := newTestMap(t, Config{})
		b, _ := m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "c")
		p := offer(t, m, "c", Inside, "198.18.0.10:3000")
		rtp := m.LookupMedia(p.RTP.Port())
		if l, r := leftOf(m, b), leftOf(m, rtp); l != 120 || r != 50 {
			t.Errorf("left at start = %d, %d; want 120, 50", l, r)
		}
		time.Sleep(1500 * time.Millisecond)
		if l, r := leftOf(m, b), leftOf(m, rtp); l != 119 || r != 49 {
			t.Errorf("left after 1.5 s = %d, %d; want 119, 49 (rounded up)", l, r)
		}
	})
}
