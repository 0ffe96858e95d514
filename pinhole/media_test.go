package pinhole

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"testing"
)

func TestMediaPair(t *testing.T) {
	m, f := newTestMap(t, Config{})
	tx := m.Begin("call-1", netip.MustParseAddr("198.18.0.10"))
	p, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000"), RTCP: ap("198.18.0.10:3001")})
	if err != nil {
		t.Fatal(err)
	}
	if p.RTP.Addr() != testPublic.IPv4 || p.RTP.Port()%2 != 0 || p.RTCPPort != p.RTP.Port()+1 || !m.cfg.MediaPorts.Contains(p.RTP.Port()) {
		t.Errorf("pair = %+v: want the public address, an even port in range and RTCP one above", p)
	}
	if !f.isHeld("udp", p.RTP) || !f.isHeld("udp", netip.AddrPortFrom(p.RTP.Addr(), p.RTCPPort)) {
		t.Errorf("pair ports not reserved")
	}
	if m.LookupMedia(p.RTP.Port()) != nil {
		t.Errorf("pair visible before Commit")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	rtp, rtcp := m.LookupMedia(p.RTP.Port()), m.LookupMedia(p.RTCPPort)
	if rtp == nil || rtcp == nil {
		t.Fatal("pair not visible after Commit")
	}
	if rtp.Type() != TypeRTP || rtp.ForwardTo() != ap("198.18.0.10:3000") || rtp.Faces() != Outside || rtp.CallID() != "call-1" {
		t.Errorf("rtp binding: %v %v facing %v, call %q", rtp.Type(), rtp.ForwardTo(), rtp.Faces(), rtp.CallID())
	}
	if rtcp.Type() != TypeRTCP || rtcp.ForwardTo() != ap("198.18.0.10:3001") {
		t.Errorf("rtcp binding: %v %v", rtcp.Type(), rtcp.ForwardTo())
	}
	if _, ok := rtp.Peer(); ok {
		t.Errorf("peer set before latching")
	}
	if rtp.Partner() != nil {
		t.Errorf("partner before the answer")
	}

	// The answer from outside gets a pair on the inside, linked to the offer's.
	q := offer(t, m, "call-1", Outside, "203.0.113.2:4000")
	if q.RTP.Addr() != testInside.IPv4 || q.RTP.Port() == p.RTP.Port() {
		t.Errorf("answer pair %+v", q)
	}
	qb := m.LookupMedia(q.RTP.Port())
	if qb.ForwardTo() != ap("203.0.113.2:4000") || m.LookupMedia(q.RTCPPort).ForwardTo() != ap("203.0.113.2:4001") {
		t.Errorf("answer forwards to %v (rtcp default must be +1)", qb.ForwardTo())
	}
	if rtp.Partner() != qb || qb.Partner() != rtp || rtcp.Partner() != m.LookupMedia(q.RTCPPort) {
		t.Errorf("legs not linked")
	}

	if !m.ReleaseCall("call-1", ReasonCallEnded) {
		t.Errorf("ReleaseCall found no call")
	}
	if rtp.Live() || qb.Live() || rtp.Partner() != nil {
		t.Errorf("bindings live after ReleaseCall")
	}
	assertEmpty(t, m, f)
}

func TestMediaMuxTakesAPair(t *testing.T) {
	m, f := newTestMap(t, Config{})
	tx := m.Begin("c", netip.Addr{})
	p, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000"), RTCP: ap("198.18.0.10:3000"), Mux: true})
	if err != nil || tx.Commit() != nil {
		t.Fatal(err)
	}
	if !f.isHeld("udp", netip.AddrPortFrom(p.RTP.Addr(), p.RTCPPort)) {
		t.Errorf("rtcp port of a muxed stream not held")
	}
	if b := m.LookupMedia(p.RTCPPort); b == nil || !b.Mux() {
		t.Errorf("muxed stream's rtcp binding missing or not marked")
	}
}

func TestReinvite(t *testing.T) {
	m, f := newTestMap(t, Config{})
	var rel releases
	m.cfg.OnRelease = rel.record

	tx := m.Begin("c", netip.Addr{})
	audio, _ := tx.Media(MediaRequest{From: Inside, Index: 0, RTP: ap("198.18.0.10:3000")})
	video, _ := tx.Media(MediaRequest{From: Inside, Index: 1, RTP: ap("198.18.0.10:3002")})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	answer := offer(t, m, "c", Outside, "203.0.113.2:4000")
	answerB := m.LookupMedia(answer.RTP.Port())

	// Same addresses again: same pairs, nothing allocated.
	before := f.n
	tx = m.Begin("c", netip.Addr{})
	a2, _ := tx.Media(MediaRequest{From: Inside, Index: 0, RTP: ap("198.18.0.10:3000")})
	v2, _ := tx.Media(MediaRequest{From: Inside, Index: 1, RTP: ap("198.18.0.10:3002")})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if a2 != audio || v2 != video || f.n != before {
		t.Errorf("unchanged re-offer got %v %v (was %v %v), %d new reservations", a2, v2, audio, video, f.n-before)
	}

	// Video moves to a new port: only video's pair changes, at Commit.
	oldVideo := m.LookupMedia(video.RTP.Port())
	tx = m.Begin("c", netip.Addr{})
	v3, err := tx.Media(MediaRequest{From: Inside, Index: 1, RTP: ap("198.18.0.10:3010")})
	if err != nil {
		t.Fatal(err)
	}
	if v3 == video || !oldVideo.Live() {
		t.Errorf("changed stream: %v (was %v); old released before Commit: %v", v3, video, !oldVideo.Live())
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if oldVideo.Live() || m.LookupMedia(video.RTP.Port()) != nil || f.isHeld("udp", video.RTP) {
		t.Errorf("old video pair still held after the change")
	}
	if rel.count(ReasonRenegotiated) != 2 {
		t.Errorf("renegotiated releases = %d, want 2 (rtp, rtcp)", rel.count(ReasonRenegotiated))
	}
	if m.LookupMedia(audio.RTP.Port()) == nil || !answerB.Live() || answerB.Partner() != m.LookupMedia(audio.RTP.Port()) {
		t.Errorf("audio touched by video's change")
	}

	// Video rejected (m= port 0): both of its legs go, audio stays.
	tx = m.Begin("c", netip.Addr{})
	tx.Drop(0, 1)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if m.LookupMedia(v3.RTP.Port()) != nil {
		t.Errorf("dropped stream still bound")
	}
	if m.LookupMedia(audio.RTP.Port()) == nil {
		t.Errorf("audio released by video's drop")
	}
	if s := m.Snapshot(); len(s.Bindings) != 4 {
		t.Errorf("%d bindings, want audio's 4", len(s.Bindings))
	}
	m.ReleaseCall("c", ReasonCallEnded)
	assertEmpty(t, m, f)
}

func TestPartialFailureRollsBack(t *testing.T) {
	// Three pairs in the range; a message with four streams cannot have them all.
	m, f := newTestMap(t, Config{MediaPorts: PortRange{20000, 20005}})
	var rel releases
	m.cfg.OnRelease = rel.record
	tx := m.Begin("c", netip.MustParseAddr("198.18.0.10"))
	var err error
	for i := range 4 {
		if _, err = tx.Media(MediaRequest{From: Inside, Index: i, RTP: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.10"), uint16(3000+2*i))}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrNoPorts) {
		t.Fatalf("fourth stream: %v, want ErrNoPorts", err)
	}
	if f.held() != 6 {
		t.Errorf("%d ports held before rollback, want 6", f.held())
	}
	tx.Rollback()
	assertEmpty(t, m, f)
	if len(rel.log) != 0 {
		t.Errorf("rolled back pairs reported as released: %v", rel.log)
	}
	if err := tx.Commit(); !errors.Is(err, ErrTxDone) {
		t.Errorf("Commit after Rollback = %v", err)
	}

	// A failure on an existing call leaves its committed pairs alone.
	first := offer(t, m, "c", Inside, "198.18.0.10:3000")
	tx = m.Begin("c", netip.Addr{})
	tx.Media(MediaRequest{From: Outside, Index: 0, RTP: ap("203.0.113.2:4000")})
	tx.Media(MediaRequest{From: Outside, Index: 1, RTP: ap("203.0.113.2:4002")})
	if _, err := tx.Media(MediaRequest{From: Outside, Index: 2, RTP: ap("203.0.113.2:4004")}); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("third stream = %v, want ErrNoPorts", err)
	}
	tx.Rollback()
	if m.LookupMedia(first.RTP.Port()) == nil || f.held() != 2 {
		t.Errorf("rollback touched the committed pair (held %d)", f.held())
	}
}

func TestBindFailureSkipsPort(t *testing.T) {
	// Two pairs; the host already uses 20001 (the RTCP port of the first).
	m, f := newTestMap(t, Config{MediaPorts: PortRange{20000, 20003}})
	f.fail = func(_ string, a netip.AddrPort) bool { return a.Port() == 20001 }
	for range 20 {
		p := offer(t, m, "c", Inside, "198.18.0.10:3000")
		if p.RTP.Port() != 20002 {
			t.Fatalf("got pair %v, want the only bindable one, 20002", p)
		}
		if f.isHeld("udp", netip.AddrPortFrom(testPublic.IPv4, 20000)) {
			t.Fatalf("RTP port of the unbindable pair left held")
		}
		tx := m.Begin("c2", netip.Addr{})
		_, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.11:3000")})
		if !errors.Is(err, ErrNoPorts) {
			t.Fatalf("second pair = %v, want ErrNoPorts", err)
		}
		tx.Rollback()
		m.ReleaseCall("c", ReasonCallEnded)
	}
	assertEmpty(t, m, f)

	// Nothing bindable: each pair is tried once, then ErrNoPorts.
	m, f = newTestMap(t, Config{MediaPorts: PortRange{20000, 20007}})
	f.fail = func(string, netip.AddrPort) bool { return true }
	tx := m.Begin("c", netip.Addr{})
	_, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")})
	tx.Rollback()
	if !errors.Is(err, ErrNoPorts) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("no bindable pair: %v, want ErrNoPorts with the bind error", err)
	}
	if f.tries != 4 {
		t.Errorf("%d binds tried for 4 pairs, want 4", f.tries)
	}
	assertEmpty(t, m, f)
}

func TestCallLimits(t *testing.T) {
	m, f := newTestMap(t, Config{MaxCalls: 4, MaxCallsPerSource: 2})
	phone := netip.MustParseAddr("198.18.0.10")
	start := func(id string, src netip.Addr) error {
		tx := m.Begin(id, src)
		defer tx.Rollback()
		if _, err := tx.Media(MediaRequest{From: Inside, RTP: netip.AddrPortFrom(phone, 3000)}); err != nil {
			return err
		}
		return tx.Commit()
	}
	for i := range 2 {
		if err := start(fmt.Sprint("a", i), phone); err != nil {
			t.Fatal(err)
		}
	}
	if err := start("a2", phone); !errors.Is(err, ErrCallLimit) {
		t.Errorf("third call from one phone = %v, want ErrCallLimit", err)
	}
	// A call already counted is not a new call: its re-INVITE passes.
	if err := start("a0", phone); err != nil {
		t.Errorf("re-INVITE of a counted call: %v", err)
	}
	if err := start("b0", netip.MustParseAddr("198.18.0.11")); err != nil {
		t.Errorf("another phone: %v", err)
	}
	if err := start("up0", netip.Addr{}); err != nil {
		t.Errorf("upstream call: %v", err)
	}
	if err := start("up1", netip.Addr{}); !errors.Is(err, ErrCallLimit) {
		t.Errorf("fifth call = %v, want ErrCallLimit (total)", err)
	}
	m.ReleaseCall("a1", ReasonCallEnded)
	if err := start("a3", phone); err != nil {
		t.Errorf("after one call ended: %v", err)
	}
	for _, id := range []string{"a0", "a3", "b0", "up0"} {
		m.ReleaseCall(id, ReasonCallEnded)
	}
	assertEmpty(t, m, f)
}

func TestExhaustionAndRecovery(t *testing.T) {
	m, f := newTestMap(t, Config{MediaPorts: PortRange{20000, 20009}})
	var ports []uint16
	for i := range 5 {
		p := offer(t, m, fmt.Sprint("c", i), Inside, "198.18.0.10:3000")
		ports = append(ports, p.RTP.Port())
	}
	slices.Sort(ports)
	if !slices.Equal(ports, []uint16{20000, 20002, 20004, 20006, 20008}) {
		t.Errorf("pairs = %v, want each of the range once", ports)
	}
	tx := m.Begin("c5", netip.Addr{})
	_, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")})
	tx.Rollback()
	if !errors.Is(err, ErrNoPorts) {
		t.Fatalf("sixth pair = %v, want ErrNoPorts", err)
	}
	m.ReleaseCall("c3", ReasonCallEnded)
	p := offer(t, m, "c5", Inside, "198.18.0.10:3000")
	if m.LookupMedia(p.RTP.Port()) == nil {
		t.Errorf("pair after release not bound")
	}
	for i := range 6 {
		m.ReleaseCall(fmt.Sprint("c", i), ReasonCallEnded)
	}
	assertEmpty(t, m, f)
}

func TestRandomOrder(t *testing.T) {
	// 100 pairs taken one by one: every one once, not in port order, and not in the order another
	// Map takes them (the chance of either by luck is 1/100!).
	take := func() []uint16 {
		m, _ := newTestMap(t, Config{MediaPorts: PortRange{20000, 20199}})
		var got []uint16
		for i := range 100 {
			p := offer(t, m, fmt.Sprint(i), Inside, "198.18.0.10:3000")
			got = append(got, p.RTP.Port())
		}
		return got
	}
	a, b := take(), take()
	sorted := slices.Clone(a)
	slices.Sort(sorted)
	for i, p := range sorted {
		if p != uint16(20000+2*i) {
			t.Fatalf("pairs %v: want each even port once", sorted)
		}
	}
	if slices.Equal(a, sorted) {
		t.Errorf("pairs handed out in port order: %v", a)
	}
	if slices.Equal(a, b) {
		t.Errorf("two maps handed out the same order: %v", a)
	}
}

func TestCommitAfterCallEnded(t *testing.T) {
	m, f := newTestMap(t, Config{})
	offer(t, m, "c", Inside, "198.18.0.10:3000")
	tx := m.Begin("c", netip.Addr{})
	if _, err := tx.Media(MediaRequest{From: Outside, RTP: ap("203.0.113.2:4000")}); err != nil {
		t.Fatal(err)
	}
	m.ReleaseCall("c", ReasonCancelled) // CANCEL crossed the 200 OK
	if err := tx.Commit(); !errors.Is(err, ErrCallEnded) {
		t.Fatalf("Commit = %v, want ErrCallEnded", err)
	}
	assertEmpty(t, m, f)
}

func TestReleaseLeg(t *testing.T) {
	m, f := newTestMap(t, Config{})
	p := offer(t, m, "c", Inside, "198.18.0.10:3000")
	q := offer(t, m, "c", Outside, "203.0.113.2:4000")
	m.Release(m.LookupMedia(q.RTCPPort), ReasonReleased)
	if m.LookupMedia(q.RTP.Port()) != nil || m.LookupMedia(p.RTP.Port()) == nil || m.LookupMedia(p.RTP.Port()).Partner() != nil {
		t.Errorf("Release of the answer's rtcp: want the answer's pair gone, the offer's kept and unlinked")
	}
	m.Release(m.LookupMedia(p.RTP.Port()), ReasonReleased)
	assertEmpty(t, m, f)
}

func TestClose(t *testing.T) {
	m, f := newTestMap(t, Config{})
	var rel releases
	m.cfg.OnRelease = rel.record
	offer(t, m, "c", Inside, "198.18.0.10:3000")
	m.Signaling(Inside, "tcp", ap("198.18.0.10:5060"), "c")
	tx := m.Begin("c", netip.Addr{})
	tx.Media(MediaRequest{From: Outside, RTP: ap("203.0.113.2:4000")})
	m.Close()
	if err := tx.Commit(); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close = %v", err)
	}
	if _, err := m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "c"); !errors.Is(err, ErrClosed) {
		t.Errorf("Signal after Close = %v", err)
	}
	if rel.count(ReasonClosed) != 3 {
		t.Errorf("closed releases = %d, want 3", rel.count(ReasonClosed))
	}
	assertEmpty(t, m, f)
	m.Close()
}

func TestSameStreamTwiceInOneMessage(t *testing.T) {
	m, f := newTestMap(t, Config{})
	tx := m.Begin("c", netip.Addr{})
	p1, _ := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")})
	p2, _ := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")})
	if p1 != p2 || f.held() != 2 {
		t.Errorf("same stream asked twice: %v then %v, %d ports held; want one pair", p1, p2, f.held())
	}
	p3, _ := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3010")})
	if p3 == p1 || f.held() != 2 || f.isHeld("udp", p1.RTP) {
		t.Errorf("stream asked again elsewhere: %v (first %v), %d ports held; want the first given back", p3, p1, f.held())
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if b := m.LookupMedia(p3.RTP.Port()); b == nil || b.ForwardTo() != ap("198.18.0.10:3010") {
		t.Errorf("committed pair forwards to %v", b)
	}
	m.ReleaseCall("c", ReasonCallEnded)
	assertEmpty(t, m, f)
}
