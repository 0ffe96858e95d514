package mediarelay

import (
	"net/netip"
	"testing"
	"time"
)

const testWindow = int64(3 * time.Second)

// learningStream returns a stream whose leg B (not muxed) learns its peer as ls says, as
// AddStream would set it up, without sockets.
func learningStream(ls LegSpec) *Stream {
	s := &Stream{callID: "call"}
	for _, rtcp := range []bool{false, true} {
		sdp := ls.Peer
		if rtcp {
			sdp = ls.peerRTCP()
		}
		e := &endpoint{stream: s, leg: LegB, rtcp: rtcp, shared: ls.Shared}
		e.peer.Store(newPeerState(latchNone, ls.Latch == LatchStrict, ls.Unanswered, sdp, ls.Signal, netip.AddrPort{}))
		s.eps[epIndex(LegB, rtcp)] = e
	}
	return s
}

// accepts reports whether e takes a packet from src that arrived at now.
func accepts(e *endpoint, src netip.AddrPort, now int64) bool {
	ok, _ := e.accept(src, now, testWindow)
	return ok
}

// spray sends the endpoint a packet from src at the start and after twice the window, and
// reports whether either was accepted.
func spray(e *endpoint, src netip.AddrPort, start int64) bool {
	return accepts(e, src, start) || accepts(e, src, start+2*testWindow)
}

// A leg's RTCP port takes no source by the window: only the address its RTP latched on. The
// callee that sends no RTCP leaves the port to nobody.
func TestRTCPFollowsRTPLatch(t *testing.T) {
	s := learningStream(LegSpec{Peer: ap("198.51.100.2:40000"), Signal: netip.MustParseAddr("198.51.100.2")})
	rtp, rtcp := s.eps[epIndex(LegB, false)], s.eps[epIndex(LegB, true)]
	attacker, media := ap("203.0.113.66:6666"), ap("203.0.113.7:7000")

	if spray(rtcp, attacker, 1) {
		t.Fatalf("RTCP port took the attacker after the window, before any RTP")
	}
	// Media from another address than signalling says: RTP latches it after the window.
	if accepts(rtp, media, 1) || !accepts(rtp, media, 1+testWindow) {
		t.Fatalf("RTP from %v: want held back during the window and accepted after", media)
	}
	if spray(rtcp, attacker, 1+testWindow) {
		t.Errorf("RTCP port took the attacker after the leg's RTP latched on %v", media)
	}
	if src := ap("203.0.113.7:7001"); !accepts(rtcp, src, 2+testWindow) {
		t.Errorf("RTCP from %v (the host the RTP latched on) dropped", src)
	}
	if got := rtcp.peer.Load().addr; got != ap("203.0.113.7:7001") {
		t.Errorf("RTCP latched on %v, want 203.0.113.7:7001", got)
	}
	// Signalling's own addresses are still preferred on the RTCP port.
	s = learningStream(LegSpec{Peer: ap("198.51.100.2:40000"), Signal: netip.MustParseAddr("198.51.100.9")})
	rtcp = s.eps[epIndex(LegB, true)]
	if src := ap("198.51.100.9:50001"); !accepts(rtcp, src, 1) {
		t.Errorf("RTCP from the signalling address %v dropped", src)
	}
}

// A callee that has not answered is heard only from where the offer went, however long it
// rings; once it answers, another source is learned by the window again.
func TestUnansweredLegAcceptsOnlySignal(t *testing.T) {
	proxy := netip.MustParseAddr("198.51.100.2")
	attacker, media := ap("203.0.113.66:6666"), ap("203.0.113.7:7000")
	s := learningStream(LegSpec{Signal: proxy, Unanswered: true})
	for _, rtcp := range []bool{false, true} {
		e := s.eps[epIndex(LegB, rtcp)]
		if spray(e, attacker, 1) {
			t.Errorf("rtcp=%v: an unanswered leg took %v after the window", rtcp, attacker)
		}
		if src := netip.AddrPortFrom(proxy, 20000); !accepts(e, src, 3*testWindow) {
			t.Errorf("rtcp=%v: an unanswered leg dropped %v, where the offer went", rtcp, src)
		}
	}
	// Answered with an SDP that gives no address (a placeholder): learned by the window.
	s = learningStream(LegSpec{Signal: proxy})
	if !spray(s.eps[epIndex(LegB, false)], media, 1) {
		t.Errorf("an answered leg without SDP address never took %v", media)
	}
}

// The forks of a call share the offer's RTCP port: a fork's RTCP from behind a NAT (not its
// SDP address) goes to the fork whose RTP latched on that host.
func TestSharedRTCPGoesToForkOfItsRTP(t *testing.T) {
	proxy := netip.MustParseAddr("198.51.100.2")
	fork1 := learningStream(LegSpec{Peer: ap("198.51.100.20:40000"), Signal: proxy, Shared: true})
	fork2 := learningStream(LegSpec{Peer: ap("10.0.0.5:40000"), Signal: proxy, Shared: true})
	natted := ap("203.0.113.9:5000")
	rtp2 := fork2.eps[epIndex(LegB, false)]
	if !spray(rtp2, natted, 1) {
		t.Fatalf("fork 2's RTP from %v never latched", natted)
	}
	shared := []*endpoint{fork1.eps[epIndex(LegB, true)], fork2.eps[epIndex(LegB, true)]}
	src := ap("203.0.113.9:5001")
	e := pickShared(shared, src)
	if e.stream != fork2 {
		t.Fatalf("RTCP from %v went to another fork than the one its RTP latched on", src)
	}
	if !accepts(e, src, 3*testWindow) {
		t.Errorf("fork 2's RTCP from %v dropped", src)
	}
	// An attacker's RTCP on the shared port gets nowhere.
	if a := ap("203.0.113.66:6666"); spray(pickShared(shared, a), a, 4*testWindow) {
		t.Errorf("the shared RTCP port took %v", a)
	}
}

// A packet from the SDP address latches its leg for good, and says so once: that is when the
// kernel path is told to take the leg. A tentative latch (another source, after the window)
// is not final; the sweep that ends its window hands it over.
func TestAcceptReportsFinalLatchOnce(t *testing.T) {
	sdp := ap("198.51.100.2:40000")
	e := learningStream(LegSpec{Peer: sdp}).eps[epIndex(LegB, false)]
	for i, want := range []bool{true, false} {
		if ok, final := e.accept(sdp, int64(i+1), testWindow); !ok || final != want {
			t.Errorf("packet %d from the SDP address: accepted %v, final %v; want true, %v", i+1, ok, final, want)
		}
	}
	e = learningStream(LegSpec{Peer: sdp}).eps[epIndex(LegB, false)]
	other := ap("203.0.113.7:7000")
	for _, now := range []int64{1, 1 + testWindow, 2 + testWindow} {
		if _, final := e.accept(other, now, testWindow); final {
			t.Errorf("a packet from %v at %d made the latch final; only the window's end does", other, now)
		}
	}
	if p := e.peer.Load(); p.state != latchTentative || p.addr != other {
		t.Errorf("latched %v in state %d; want %v, tentative", p.addr, p.state, other)
	}
}
