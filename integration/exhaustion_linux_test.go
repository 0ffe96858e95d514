package integration

import (
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// TestPortExhaustion gives sipcar four relay ports (two pairs: one call, a pair on each side).
// While one call holds them, a second INVITE gets 503 with Retry-After, leaves nothing
// allocated and reaches neither the PBX nor does the ACK of the 503; once the first call ends, a
// call goes through again.
func TestPortExhaustion(t *testing.T) {
	t.Parallel()
	l := newUpstreamLab(newTestbed(t))
	inside := l.capture(l.car, "in0", netip.AddrPortFrom(pbxAddr, 9))
	pbx := l.sipp(l.pbx, "pbx-1", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", "SIPCAR_RTP_PORTS=20000-20003")...)
	first := l.sipp(l.phone, "phone-1", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 4000, rtpPcap: true})

	held := car.waitMap(t, 10*time.Second, "the first call holding every relay port", func(m serverMap) bool {
		return len(m.of("sip-rtp")) == 2 && m.MediaPorts.Free == 0
	})

	phone := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	invite := buildSIP("INVITE sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/UDP 198.51.100.20:5070;branch=z9hG4bKexhausted",
		"From: <sip:phone@198.51.100.1>;tag=second",
		"To: <sip:pbx@198.51.100.1>",
		"Call-ID: second-call",
		"CSeq: 1 INVITE",
		"Contact: <sip:phone@198.51.100.20:5070>",
		"Max-Forwards: 70",
		"Content-Type: application/sdp",
	}, offer(netip.AddrPortFrom(phoneAddr, 7000)))
	phone.send(t, netip.AddrPortFrom(publicAddr, 5060), invite)
	resp := phone.recv(t, 5*time.Second, "the answer to a second INVITE with no relay port left", isResponse("INVITE", 0))
	t.Logf("second INVITE: %s, Retry-After: %s, Warning: %s", resp.start, resp.header("Retry-After"), resp.header("Warning"))
	if resp.status() != 503 {
		t.Errorf("second INVITE answered %q; want 503", resp.start)
	}
	if n, err := strconv.Atoi(resp.header("Retry-After")); err != nil || n <= 0 {
		t.Errorf("Retry-After: %q; want a number of seconds", resp.header("Retry-After"))
	}
	phone.send(t, netip.AddrPortFrom(publicAddr, 5060), buildSIP("ACK sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/UDP 198.51.100.20:5070;branch=z9hG4bKexhausted",
		"From: <sip:phone@198.51.100.1>;tag=second",
		"To: " + resp.header("To"),
		"Call-ID: second-call",
		"CSeq: 1 ACK",
		"Max-Forwards: 70",
	}, ""))
	after := car.mustServerMap(t)
	if after.MediaPorts.InUse != held.MediaPorts.InUse || len(after.media()) != len(held.media()) {
		t.Errorf("the refused INVITE changed the media bindings:\nbefore\n%vafter\n%v", held, after)
	}
	for _, e := range after.media() {
		if e.CallID == "second-call" {
			t.Errorf("the refused call left a binding: %v", e)
		}
	}

	first.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "the first call's BYE")
	for _, m := range sipMessages(inside.stop(t)) {
		if containsAny(m, "Call-ID: second-call") {
			t.Errorf("the PBX received a message of the refused call (sipcar answered it itself):\n%s", m)
		}
	}

	pbx = l.sipp(l.pbx, "pbx-2", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	again := l.sipp(l.phone, "phone-2", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 1000, rtpPcap: true})
	again.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "the second call's BYE")
}
