package pinhole

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

func TestAnswerPairReservedWithOffer(t *testing.T) {
	var rel releases
	m, f := newTestMap(t, Config{ReserveAnswerPair: true, OnRelease: rel.record})
	o := offer(t, m, "c", Inside, "198.18.0.10:3000")
	ans, ok := m.AnswerPair("c", 0, 0)
	if !ok {
		t.Fatal("no answer pair after the offer")
	}
	if ans.RTP.Addr() != testInside.IPv4 || ans.RTP == o.RTP {
		t.Errorf("answer pair %v: want a pair of its own facing the offerer (inside)", ans.RTP)
	}
	if !f.isHeld("udp", ans.RTP) || !f.isHeld("udp", netip.AddrPortFrom(ans.RTP.Addr(), ans.RTCPPort)) {
		t.Errorf("answer pair ports not reserved")
	}
	sp := m.LookupMedia(ans.RTP.Port())
	if sp == nil || sp.ForwardTo().IsValid() || sp.Faces() != Inside {
		t.Fatalf("answer pair binding %v: want it published, facing the inside, standing for nobody yet", sp)
	}
	var text bytes.Buffer
	if err := m.Snapshot().WriteServerMap(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), sp.Address().String()+"[ANY]") {
		t.Errorf("server map does not show the reserved answer pair as [ANY]:\n%s", text.String())
	}
	// A retransmitted offer reserves nothing more.
	offer(t, m, "c", Inside, "198.18.0.10:3000")
	if got := m.Snapshot().MediaPorts.InUse; got != 4 {
		t.Errorf("after a retransmitted offer %d media ports in use, want 4", got)
	}

	// The answer takes the reserved pair over: same ports, now standing for the answerer.
	a := offer(t, m, "c", Outside, "203.0.113.2:4000")
	if a != ans {
		t.Errorf("answer got %v, want the reserved %v", a.RTP, ans.RTP)
	}
	b := m.LookupMedia(a.RTP.Port())
	if b == sp || sp.Live() || !b.Live() || b.ForwardTo() != ap("203.0.113.2:4000") {
		t.Errorf("after the answer: binding %v forwards to %v, old live %v", b, b.ForwardTo(), sp.Live())
	}
	if b.Partner() != m.LookupMedia(o.RTP.Port()) {
		t.Errorf("answer not linked to the offer")
	}
	if len(rel.log) != 0 {
		t.Errorf("taking the answer pair over released %v; want nothing released", rel.log)
	}
	if _, ok := m.AnswerPair("c", 0, 0); ok {
		t.Errorf("answer pair still reported after the answer took it")
	}
	if got := m.Snapshot().MediaPorts.InUse; got != 4 || !f.isHeld("udp", a.RTP) {
		t.Errorf("after the answer %d media ports in use (want 4), answer port held %v", got, f.isHeld("udp", a.RTP))
	}
	m.ReleaseCall("c", ReasonCallEnded)
	assertEmpty(t, m, f)
}

func TestAnswerPairReleasedWithCall(t *testing.T) {
	m, f := newTestMap(t, Config{ReserveAnswerPair: true})
	offer(t, m, "rejected", Outside, "203.0.113.2:4000")
	if _, ok := m.AnswerPair("rejected", 0, 0); !ok {
		t.Fatal("no answer pair after the offer")
	}
	m.ReleaseCall("rejected", ReasonRejected)
	assertEmpty(t, m, f)

	// A rolled-back offer gives both pairs back.
	tx := m.Begin("rolled", netip.Addr{})
	if _, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")}); err != nil {
		t.Fatal(err)
	}
	if f.held() != 4 {
		t.Errorf("%d ports held by the pending offer, want 4", f.held())
	}
	tx.Rollback()
	assertEmpty(t, m, f)
}

func TestAnswerPairNeedsBothPairs(t *testing.T) {
	// Two ports: room for one pair only. The offer fails as a whole, holding nothing.
	m, f := newTestMap(t, Config{ReserveAnswerPair: true, MediaPorts: PortRange{First: 20000, Last: 20001}})
	tx := m.Begin("c", netip.Addr{})
	if _, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")}); err == nil {
		t.Errorf("offer reserved its pair without room for the answer's")
	}
	tx.Rollback()
	assertEmpty(t, m, f)
}

func TestAnswerPairIdleExpiry(t *testing.T) {
	// A stream whose answer never comes: its reserved pair goes with the stream.
	var rel releases
	m, f := newTestMap(t, Config{ReserveAnswerPair: true, OnRelease: rel.record})
	o := offer(t, m, "c", Inside, "198.18.0.10:3000")
	m.Release(m.LookupMedia(o.RTP.Port()), ReasonIdle)
	if rel.count(ReasonIdle) != 4 {
		t.Errorf("releasing the offer's pair released %d bindings, want 4 (its answer pair too)", rel.count(ReasonIdle))
	}
	assertEmpty(t, m, f)
}
