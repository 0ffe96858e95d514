package pinhole

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// changes records Config.OnChange calls.
type changes struct {
	mu    sync.Mutex
	calls map[string]int
	sigs  map[netip.AddrPort]int
}

func (c *changes) record(ch Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls, c.sigs = map[string]int{}, map[netip.AddrPort]int{}
	}
	if ch.Call != "" {
		c.calls[ch.Call]++
	} else {
		c.sigs[ch.Signaling]++
	}
}

func (c *changes) reset() (calls map[string]int, sigs map[netip.AddrPort]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	calls, sigs = c.calls, c.sigs
	c.calls, c.sigs = map[string]int{}, map[netip.AddrPort]int{}
	return calls, sigs
}

// A call with an offer, two forked answers and latched peers, and a registered phone's sip
// binding, exported from one Map and restored into another (a standby taking over): the second
// holds the same bindings on the same ports, linked, latched and with the registration's expiry,
// and releases them as the first would.
func TestExportRestore(t *testing.T) {
	var ch changes
	m1, f1 := newTestMap(t, Config{OnChange: ch.record, ReserveAnswerPair: true})
	phone := ap("203.0.113.5:5060")
	sig, err := m1.SignalingFor(SignalingRequest{From: Outside, Transport: "udp", Addr: phone, CallID: "reg", Source: phone.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	m1.Registered(sig, time.Hour)
	o := offer(t, m1, "call", Inside, "198.18.0.10:3000")
	a1 := answer(t, m1, "call", Outside, "tag1", "203.0.113.2:4000")
	a2 := answer(t, m1, "call", Outside, "tag2", "203.0.113.3:5000")
	m1.LookupMedia(o.RTP.Port()).SetPeer(ap("198.18.0.10:3000"))
	m1.LookupMedia(a1.RTP.Port()).SetPeer(ap("203.0.113.99:4000"))
	m1.RingCall("call", time.Minute)

	calls, sigs := ch.reset()
	if calls["call"] == 0 || sigs[sig.Address()] == 0 {
		t.Errorf("OnChange: calls %v, sip bindings %v; want the call and %v", calls, sigs, sig.Address())
	}
	cs, ok := m1.ExportCall("call")
	if !ok {
		t.Fatal("ExportCall: no call")
	}
	ss, ok := m1.ExportSignaling(sig.Address())
	if !ok {
		t.Fatal("ExportSignaling: no binding")
	}
	if got := len(cs.Streams); got != 1 || len(cs.Streams[0].Legs) != 2 || len(cs.Streams[0].Forks) != 1 {
		t.Fatalf("exported %+v; want one stream with two legs and one fork", cs)
	}
	if _, ok := m1.ExportCall("none"); ok {
		t.Error("ExportCall of an unknown call")
	}
	before := m1.Snapshot()
	m1.Close() // the active dies: its ports are free for the standby

	m2, f2 := newTestMap(t, Config{OnChange: ch.record, ReserveAnswerPair: true})
	if err := m2.RestoreCall(cs); err != nil {
		t.Fatalf("RestoreCall: %v", err)
	}
	b, err := m2.RestoreSignaling(ss)
	if err != nil {
		t.Fatalf("RestoreSignaling: %v", err)
	}
	if err := m2.RestoreCall(cs); !errors.Is(err, ErrExists) {
		t.Errorf("second RestoreCall: %v, want ErrExists", err)
	}
	if _, err := m2.RestoreSignaling(ss); !errors.Is(err, ErrExists) {
		t.Errorf("second RestoreSignaling: %v, want ErrExists", err)
	}
	cs2, _ := m2.ExportCall("call")
	ss2, _ := m2.ExportSignaling(ss.Address)
	netips := cmp.Options{cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b })}
	if diff := cmp.Diff(cs, cs2, netips); diff != "" {
		t.Errorf("restored call differs (-exported +restored):\n%s", diff)
	}
	if diff := cmp.Diff(ss, ss2, netips); diff != "" {
		t.Errorf("restored sip binding differs (-exported +restored):\n%s", diff)
	}
	after := m2.Snapshot()
	if len(after.Bindings) != len(before.Bindings) || after.MediaPorts.InUse != before.MediaPorts.InUse {
		t.Errorf("restored map: %d bindings, %d media ports; before: %d, %d", len(after.Bindings), after.MediaPorts.InUse,
			len(before.Bindings), before.MediaPorts.InUse)
	}
	for _, e := range after.Bindings {
		if e.Type == TypeSIP && (e.LeftSeconds == nil || *e.LeftSeconds < 3500) {
			t.Errorf("restored registration binding lives %v s; want the hour it was registered for", e.LeftSeconds)
		}
	}
	ob, b1, b2 := m2.LookupMedia(o.RTP.Port()), m2.LookupMedia(a1.RTP.Port()), m2.LookupMedia(a2.RTP.Port())
	if ob == nil || b1 == nil || b2 == nil {
		t.Fatal("restored pairs not on their ports")
	}
	if ob.Partner() != b1 || b1.Partner() != ob || b2.Partner() != ob {
		t.Errorf("partners: offer %v fork1 %v fork2 %v", ob.Partner(), b1.Partner(), b2.Partner())
	}
	if p, _ := b1.Peer(); p != ap("203.0.113.99:4000") {
		t.Errorf("fork 1 latched on %v, want 203.0.113.99:4000", p)
	}
	if got, ok := m2.Resolve(Inside, b.Address()); !ok || got.ForwardTo() != phone {
		t.Errorf("Resolve of the restored binding: %v %v", got, ok)
	}

	// The restored call ends as any: every port and reservation goes.
	m2.SettleFork("call", "tag1")
	if !m2.ReleaseCall("call", ReasonCallEnded) {
		t.Error("ReleaseCall: no call")
	}
	m2.Release(b, ReasonReleased)
	assertEmpty(t, m2, f2)
	if f1.held() != 0 {
		t.Errorf("first map holds %d reservations after Close", f1.held())
	}
}

// A restore whose port is taken fails whole, leaving nothing behind.
func TestRestoreCallPortTaken(t *testing.T) {
	m1, _ := newTestMap(t, Config{})
	o := offer(t, m1, "call", Inside, "198.18.0.10:3000")
	answer(t, m1, "call", Outside, "", "203.0.113.2:4000")
	cs, _ := m1.ExportCall("call")
	m1.Close()

	f := newFakeReserve(t)
	m2, err := New(Config{Inside: testInside, Public: testPublic, ReserveMedia: f.reserve, ReserveSignaling: f.reserve})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	// Another process holds the offer pair's RTCP port.
	if _, err := f.reserve("udp", netip.AddrPortFrom(o.RTP.Addr(), o.RTCPPort)); err != nil {
		t.Fatal(err)
	}
	if err := m2.RestoreCall(cs); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("RestoreCall with a port taken: %v, want ErrNoPorts", err)
	}
	if s := m2.Snapshot(); len(s.Bindings) != 0 || s.Calls != 0 || s.MediaPorts.InUse != 0 || f.held() != 1 {
		t.Errorf("after a failed restore: %d bindings, %d calls, %d ports in use, %d reservations (want only the other's)",
			len(s.Bindings), s.Calls, s.MediaPorts.InUse, f.held())
	}
	bad := cs
	bad.Streams = []StreamState{{Legs: []LegState{cs.Streams[0].Legs[0], cs.Streams[0].Legs[0]}}}
	if err := m2.RestoreCall(bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("two legs on one side: %v, want ErrInvalid", err)
	}
}

// takeSlots takes exactly the slots named, all or none, and the pool stays consistent.
func TestPoolTakeSlots(t *testing.T) {
	p := newPool(PortRange{First: 100, Last: 109}, 1, &lockedRand{})
	if !p.takeSlots(3, 7) {
		t.Fatal("takeSlots(3, 7) on a fresh pool")
	}
	if p.takeSlots(1, 7) {
		t.Fatal("takeSlots of a taken slot succeeded")
	}
	if p.takeSlots(2, 2) || p.takeSlots(10) || p.takeSlots(-1) {
		t.Fatal("takeSlots of a slot twice or out of range succeeded")
	}
	seen := map[int32]bool{}
	for {
		s, ok := p.take()
		if !ok {
			break
		}
		if seen[s] || s == 3 || s == 7 {
			t.Fatalf("take returned %d twice or a slot taken before", s)
		}
		seen[s] = true
	}
	if len(seen) != 8 {
		t.Errorf("took %d slots after takeSlots, want 8", len(seen))
	}
	p.put(3)
	if !p.takeSlots(3) {
		t.Error("a slot put back cannot be taken by takeSlots")
	}
}

// Closing the Map (sipcar going away) reports no change: a replica keeps the calls and the
// registration for the standby, where releasing them one by one would delete them.
func TestCloseReportsNoChange(t *testing.T) {
	var ch changes
	m, _ := newTestMap(t, Config{OnChange: ch.record})
	phone := ap("203.0.113.5:5060")
	sig, err := m.SignalingFor(SignalingRequest{From: Outside, Transport: "udp", Addr: phone, CallID: "reg", Source: phone.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	m.Registered(sig, time.Hour)
	offer(t, m, "call", Inside, "198.18.0.10:3000")
	if calls, sigs := ch.reset(); calls["call"] == 0 || len(sigs) == 0 {
		t.Fatalf("changes before Close: calls %v sip bindings %v; want the call and the binding", calls, sigs)
	}
	m.Close()
	if calls, sigs := ch.reset(); len(calls) != 0 || len(sigs) != 0 {
		t.Errorf("Close reported changes: calls %v sip bindings %v; want none", calls, sigs)
	}
	if sig.Live() {
		t.Error("the sip binding is still live after Close")
	}
}
