package integration

import (
	"net/netip"
	"testing"
	"time"
)

// TestMediaBeforeAnswer: a callee's first packets often overtake its answer (it sends RTP as it
// sends the 200). sipcar reserves the answer's pair with the offer, so those packets reach the
// caller at once, from the port the answer then names, and the answer keeps that pair.
func TestMediaBeforeAnswer(t *testing.T) {
	for _, mode := range []string{"fallback", "fanin"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			l := newGoLab(t, "SIPCAR_MEDIA_MODE="+mode)
			call := placeGoCall(t, l.phoneSIP, l.pbxSIP, "early", offer(l.phoneRTP.addr))

			// The callee's media leaves before its answer, and arrives before it.
			l.pbxRTP.send(t, call.offered, rtp(0xea, 1))
			src, ok := tryRTP(l.phoneRTP, 0xea, 3*time.Second)
			if !ok {
				t.Fatal("the callee's media sent before its answer did not reach the caller")
			}
			if src.Addr() != publicAddr {
				t.Errorf("early media reached the caller from %v, want sipcar's public address", src)
			}

			ok200, answered := call.answer("callee", offer(l.pbxRTP.addr))
			if answered != src {
				t.Errorf("the 200 names media at %v, but the callee's first packets came from %v", answered, src)
			}
			// Both ways through the same pairs once the answer is in.
			l.bothWays(t, call.offered, answered, 2, "after the answer")
			if m := l.sipcar.mustServerMap(t); len(m.of("sip-rtp")) != 2 || m.MediaPorts.InUse != 4 {
				t.Errorf("mid-call %d sip-rtp bindings, %d media ports in use; want 2 and 4\n%v", len(m.of("sip-rtp")), m.MediaPorts.InUse, m)
			}
			call.ack(ok200)
			call.bye(ok200)
			l.sipcar.waitNoMedia(t, "BYE")
			l.sipcar.checkLogClean(t)
		})
	}
}

// TestLongRinging: a phone may ring for minutes with nothing sent but the 180, longer than the
// media pairs' setup and idle lifetimes (2 s here). The pairs stay while the INVITE waits for its
// final response, and the call has media once answered.
func TestLongRinging(t *testing.T) {
	t.Parallel()
	l := newGoLab(t, "SIPCAR_MEDIA_TTL=2s", "SIPCAR_MEDIA_IDLE_TTL=2s")
	call := placeGoCall(t, l.phoneSIP, l.pbxSIP, "ringing", offer(l.phoneRTP.addr))
	call.respond(180, "Ringing", "callee", "")
	l.phoneSIP.recv(t, 5*time.Second, "the 180 at the phone", isResponse("INVITE", 180))

	// Ring for more than twice the lifetimes, with no message and no packet.
	time.Sleep(5 * time.Second)
	if m := l.sipcar.mustServerMap(t); len(m.of("sip-rtp")) != 2 {
		t.Fatalf("after ringing 5 s: %d sip-rtp bindings, want 2 (the offer's pair and its answer's)\n%v", len(m.of("sip-rtp")), m)
	}

	ok, answered := call.answer("callee", offer(l.pbxRTP.addr))
	l.bothWays(t, call.offered, answered, 1, "after a long ringing")
	call.ack(ok)
	call.bye(ok)
	l.sipcar.waitNoMedia(t, "BYE")
	l.sipcar.checkLogClean(t)
}

// TestRTCPMuxAnswer: with a=rtcp-mux offered and accepted, the stream sipcar wired from the offer
// (before it knew the answer would multiplex) is replaced at the answer; media and RTCP then
// flow on the one port each way.
func TestRTCPMuxAnswer(t *testing.T) {
	t.Parallel()
	l := newGoLab(t)
	muxed := func(a netip.AddrPort) string { return offer(a) + "a=rtcp-mux\r\n" }
	call := placeGoCall(t, l.phoneSIP, l.pbxSIP, "muxed", muxed(l.phoneRTP.addr))

	ok, answered := call.answer("callee", muxed(l.pbxRTP.addr))
	l.bothWays(t, call.offered, answered, 1, "with rtcp-mux")
	// RTCP on the RTP port: forwarded on the other side's RTP port too.
	n, src := relayRTCP(t, l.phoneRTP, answered, l.pbxRTP, 3)
	if n != 3 || src != call.offered {
		t.Errorf("muxed RTCP: %d of 3 reached the callee, from %v; want all from %v", n, src, call.offered)
	}
	call.ack(ok)
	call.bye(ok)
	l.sipcar.waitNoMedia(t, "BYE")
	l.sipcar.checkLogClean(t)
}
