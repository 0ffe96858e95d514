package integration

import (
	"bytes"
	"net/netip"
	"regexp"
	"testing"
	"time"
)

// TestRegisterThenIncomingCall: a phone outside registers through sipcar with a registrar
// inside (kamailio), then a caller inside calls the phone's user through the registrar. The
// registrar only knows the phone by sipcar's inside binding (the phone's network has no route
// from the inside), so the call arriving proves the binding works; the binding lives as long as
// the registration, media flows both ways, and the public side sees no inside address where an
// address is given to be reached at (Via, Contact, Record-Route, Route, SDP).
func TestRegisterThenIncomingCall(t *testing.T) {
	t.Parallel()
	l := newUpstreamLab(newTestbed(t))
	public := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	l.startKamailio(l.pbx)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)

	reg := l.sipp(l.phone, "register", sippOpts{scenario: "register.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", service: "alice"})
	reg.succeeded(t, 20*time.Second, 1)

	phoneSIP := netip.AddrPortFrom(phoneAddr, 5060)
	m := car.mustServerMap(t)
	var binding *entry
	for _, e := range m.of("sip") {
		if e.ForwardTo == phoneSIP {
			binding = &e
		}
	}
	switch {
	case binding == nil:
		t.Fatalf("no sip binding for the registered phone %v:\n%v", phoneSIP, m)
	case binding.Faces != "inside" || !insideNet.Contains(binding.Address.Addr()):
		t.Errorf("the phone's binding %v does not face the inside", binding)
	case binding.LeftSeconds == nil || *binding.LeftSeconds <= 120 || *binding.LeftSeconds > 300+60:
		// Expires: 300; the default signaling lifetime is 120 s.
		t.Errorf("the registered phone's binding %v: want it to live as long as the registration (300 s), not the 120 s of a call's", binding)
	}

	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uas_media.xml", local: phoneAddr.String(), echo: true})
	l.waitListening(l.phone, "udp", 5060)
	caller := l.sipp(l.pbx, "caller", sippOpts{scenario: "uac_media.xml", local: pbxAddr.String(), port: 5070,
		media: 6100, remote: pbxAddr.String() + ":5060", service: "alice", pauseMS: 3000, rtpPcap: true})

	car.waitMap(t, 15*time.Second, "media both ways through both sip-rtp bindings", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		return len(rtp) == 2 && rtp[0].PacketsSent > 0 && rtp[0].PacketsReceived > 0 &&
			rtp[1].PacketsSent > 0 && rtp[1].PacketsReceived > 0
	})
	caller.succeeded(t, 30*time.Second, 1)
	phone.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")

	msgs := sipMessages(public.stop(t))
	for _, start := range []string{"REGISTER ", "INVITE ", "BYE ", "SIP/2.0 200 "} {
		if countStartLines(msgs, start) == 0 {
			t.Errorf("no %q message on sipcar's public side (%d SIP messages)", start, len(msgs))
		}
	}
	for _, msg := range msgs {
		for _, line := range addressLines.FindAll(msg, -1) {
			if bytes.Contains(line, []byte("198.18.0.")) {
				t.Errorf("an inside address in %q on the public side, in:\n%s", line, msg)
			}
		}
	}
}

// addressLines matches the lines of a SIP message that give addresses to be reached at: Via,
// Contact, Record-Route, Route, Path (and compact forms), SDP c=, o= and a=rtcp. From, To and
// Call-ID are identities, which sipcar leaves as they are.
var addressLines = regexp.MustCompile(`(?mi)^(via|v|contact|m|record-route|route|path)[ \t]*:.*$|^(c|o)=.*$|^a=rtcp:.*$`)
