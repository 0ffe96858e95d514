package pinhole

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// answer allocates the pair of an answer from side from in dialog fork, in its own transaction.
func answer(t testing.TB, m *Map, callID string, from Side, fork, rtp string) Pair {
	t.Helper()
	tx := m.Begin(callID, netip.Addr{})
	defer tx.Rollback()
	p, err := tx.Media(MediaRequest{From: from, RTP: ap(rtp), Fork: fork})
	if err != nil {
		t.Fatalf("Media(%s %s %s): %v", from, fork, rtp, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return p
}

func TestForkedAnswersGetPairsOfTheirOwn(t *testing.T) {
	var rel releases
	m, f := newTestMap(t, Config{OnRelease: rel.record})
	o := offer(t, m, "fork", Inside, "198.18.0.10:3000")
	a1 := answer(t, m, "fork", Outside, "tag1", "203.0.113.2:4000")
	a2 := answer(t, m, "fork", Outside, "tag2", "203.0.113.3:5000")
	if a1 == a2 {
		t.Fatalf("second fork got the first fork's pair %v", a1.RTP)
	}
	ob := m.LookupMedia(o.RTP.Port())
	b1, b2 := m.LookupMedia(a1.RTP.Port()), m.LookupMedia(a2.RTP.Port())
	if b1 == nil || b2 == nil || !b1.Live() || !b2.Live() {
		t.Fatalf("fork pairs not both live: %v %v", b1, b2)
	}
	if b1.ForwardTo() != ap("203.0.113.2:4000") || b2.ForwardTo() != ap("203.0.113.3:5000") {
		t.Errorf("forks forward to %v and %v", b1.ForwardTo(), b2.ForwardTo())
	}
	// Each fork's pair sends out through the one offer pair; the offer pair answers to the first.
	if b1.Partner() != ob || b2.Partner() != ob || ob.Partner() != b1 {
		t.Errorf("partners: fork1 %v fork2 %v offer %v", b1.Partner(), b2.Partner(), ob.Partner())
	}
	if n := len(m.Snapshot().Bindings); n != 6 {
		t.Errorf("server map has %d bindings, want 6 (three pairs)", n)
	}

	// A retransmitted 183 of the second fork keeps its pair; a changed one replaces only it.
	if again := answer(t, m, "fork", Outside, "tag2", "203.0.113.3:5000"); again != a2 {
		t.Errorf("retransmission got %v, want %v", again.RTP, a2.RTP)
	}
	a2b := answer(t, m, "fork", Outside, "tag2", "203.0.113.3:5002")
	if b2.Live() || !b1.Live() || rel.count(ReasonRenegotiated) != 2 {
		t.Errorf("re-answer of fork 2: old live %v, fork 1 live %v, renegotiated %d", b2.Live(), b1.Live(), rel.count(ReasonRenegotiated))
	}
	b2 = m.LookupMedia(a2b.RTP.Port())

	// The 2xx of fork 2 settles the call: fork 1's pair goes, fork 2's takes its place.
	m.SettleFork("fork", "tag2")
	if b1.Live() || !b2.Live() || !ob.Live() {
		t.Errorf("after settling: fork1 %v fork2 %v offer %v", b1.Live(), b2.Live(), ob.Live())
	}
	if rel.count(ReasonForkEnded) != 2 {
		t.Errorf("fork-ended releases = %d, want 2", rel.count(ReasonForkEnded))
	}
	if ob.Partner() != b2 || b2.Partner() != ob {
		t.Errorf("offer pair not linked to the settled fork")
	}
	// A re-INVITE in the settled dialog renegotiates its answer like any call.
	if p := answer(t, m, "fork", Outside, "tag2", "203.0.113.3:5002"); p != a2b {
		t.Errorf("re-answer in the settled dialog got %v, want %v", p.RTP, a2b.RTP)
	}
	m.ReleaseCall("fork", ReasonCallEnded)
	assertEmpty(t, m, f)
}

func TestSecondAnswerEndsWithItsBye(t *testing.T) {
	m, f := newTestMap(t, Config{})
	o := offer(t, m, "c", Outside, "203.0.113.2:4000")
	a1 := answer(t, m, "c", Inside, "t1", "198.18.0.10:3000")
	m.SettleFork("c", "t1")
	// A second 2xx from another fork after the first: it gets media until the caller's BYE.
	a2 := answer(t, m, "c", Inside, "t2", "198.18.0.11:3000")
	b2 := m.LookupMedia(a2.RTP.Port())
	if b2 == nil || a2 == a1 {
		t.Fatalf("second 2xx got no pair of its own")
	}
	if !m.EndFork("c", "t2") {
		t.Fatalf("EndFork of the second dialog reports the call's only dialog")
	}
	if b2.Live() || !m.LookupMedia(a1.RTP.Port()).Live() || !m.LookupMedia(o.RTP.Port()).Live() {
		t.Errorf("EndFork(t2) released the wrong pairs")
	}
	if m.EndFork("c", "t1") {
		t.Errorf("EndFork of the last dialog must leave the call to ReleaseCall")
	}
	if m.LookupMedia(a1.RTP.Port()) == nil {
		t.Errorf("EndFork of the last dialog released its pair")
	}
	m.ReleaseCall("c", ReasonCallEnded)
	assertEmpty(t, m, f)
}

func TestForkedOfferChangeRelinksForks(t *testing.T) {
	m, f := newTestMap(t, Config{})
	offer(t, m, "c", Inside, "198.18.0.10:3000")
	a1 := answer(t, m, "c", Outside, "t1", "203.0.113.2:4000")
	a2 := answer(t, m, "c", Outside, "t2", "203.0.113.3:4000")
	// The caller's new offer (an UPDATE in early dialog) replaces the offer pair for every fork.
	o2 := offer(t, m, "c", Inside, "198.18.0.10:3100")
	ob := m.LookupMedia(o2.RTP.Port())
	if m.LookupMedia(a1.RTP.Port()).Partner() != ob || m.LookupMedia(a2.RTP.Port()).Partner() != ob {
		t.Errorf("forks not relinked to the new offer pair")
	}
	// Releasing the first fork's binding (idle) promotes the second, not the offer.
	m.Release(m.LookupMedia(a1.RTP.Port()), ReasonIdle)
	if ob.Partner() != m.LookupMedia(a2.RTP.Port()) {
		t.Errorf("second fork not promoted after the first was released")
	}
	// Releasing the offer's binding leaves the answers where they are (no promotion across sides).
	m.Release(ob, ReasonIdle)
	if b := m.LookupMedia(a2.RTP.Port()); b == nil || !b.Live() {
		t.Errorf("answer pair released with the offer's")
	}
	m.ReleaseCall("c", ReasonCallEnded)
	assertEmpty(t, m, f)
}

func TestForksCapped(t *testing.T) {
	m, f := newTestMap(t, Config{})
	offer(t, m, "c", Inside, "198.18.0.10:3000")
	for i := range MaxForks + 1 {
		answer(t, m, "c", Outside, fmt.Sprint("tag", i), fmt.Sprintf("203.0.113.2:%d", 4000+2*i))
	}
	tx := m.Begin("c", netip.Addr{})
	_, err := tx.Media(MediaRequest{From: Outside, RTP: ap("203.0.113.3:4000"), Fork: "one-too-many"})
	if !errors.Is(err, ErrCallLimit) {
		t.Errorf("answer of fork %d: err %v, want ErrCallLimit", MaxForks+2, err)
	}
	tx.Rollback()
	// A known fork still renegotiates.
	answer(t, m, "c", Outside, "tag3", "203.0.113.9:4000")
	if got := m.Snapshot().MediaPorts.InUse; got != 2*(MaxForks+2) {
		t.Errorf("%d media ports in use, want %d (the offer's pair and one per answer)", got, 2*(MaxForks+2))
	}
	m.ReleaseCall("c", ReasonCallEnded)
	assertEmpty(t, m, f)
}
