package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestMalformedRequest sends requests with a broken Via from the phone: each gets 400 Bad
// Request with a Warning that says why, is counted as malformed, and is not forwarded to the
// PBX (the next good request is the first thing the PBX receives).
func TestMalformedRequest(t *testing.T) {
	t.Parallel()
	l := newUpstreamLab(newTestbed(t))
	pbx := l.udpPeer(l.pbx, netip.AddrPortFrom(pbxAddr, 5060))
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	phone := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	sipcarAddr := netip.AddrPortFrom(publicAddr, 5060)

	cases := []struct{ name, via string }{
		{"bad IPv4", "SIP/2.0/UDP 198.51.100.300:5070;branch=z9hG4bKbad1"},
		{"bad port", "SIP/2.0/UDP 198.51.100.20:99999;branch=z9hG4bKbad2"},
		{"no sent-by", "SIP/2.0/UDP ;branch=z9hG4bKbad3"},
		{"bad IPv6", "SIP/2.0/UDP [2001:db8::zz]:5070;branch=z9hG4bKbad4"},
	}
	malformed := 0.0
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := buildSIP("INVITE sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
				"Via: " + c.via,
				"From: <sip:phone@198.51.100.1>;tag=bad" + fmt.Sprint(i),
				"To: <sip:pbx@198.51.100.1>",
				fmt.Sprintf("Call-ID: malformed-%d", i),
				"CSeq: 1 INVITE",
				"Contact: <sip:phone@198.51.100.20:5070>",
				"Max-Forwards: 70",
				"Content-Type: application/sdp",
			}, offer(netip.MustParseAddrPort("198.51.100.20:7000")))
			phone.send(t, sipcarAddr, bad)
			resp := phone.recv(t, 5*time.Second, "sipcar's answer to an INVITE with Via "+c.via, func(m *sipMsg) bool {
				return m.status() != 0 && m.header("Call-ID") == fmt.Sprintf("malformed-%d", i)
			})
			if resp.status() != 400 {
				t.Errorf("answer: %q; want 400 Bad Request", resp.start)
			}
			if w := resp.header("Warning"); !strings.HasPrefix(w, "399 ") || len(w) < 8 {
				t.Errorf("Warning: %q; want a 399 warning that says what is wrong", w)
			}
			t.Logf("%s: %s, Warning: %s", c.name, resp.start, resp.header("Warning"))
			malformed++
			if got := sumMetric(car.metrics(t), "sipcar_sip_messages_malformed_total"); got != malformed {
				t.Errorf("sipcar_sip_messages_malformed_total = %v; want %v", got, malformed)
			}

			// sipcar reads the phone's datagrams in order: had it forwarded the bad one, the PBX
			// would get it before this probe.
			probe := fmt.Sprintf("probe-%d", i)
			phone.send(t, sipcarAddr, buildSIP("OPTIONS sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
				fmt.Sprintf("Via: SIP/2.0/UDP 198.51.100.20:5070;branch=z9hG4bKprobe%d", i),
				"From: <sip:phone@198.51.100.1>;tag=p" + fmt.Sprint(i),
				"To: <sip:pbx@198.51.100.1>",
				"Call-ID: " + probe,
				"CSeq: 1 OPTIONS",
				"Max-Forwards: 70",
			}, ""))
			got := pbx.recv(t, 5*time.Second, "the probe OPTIONS at the PBX", nil)
			if id := got.header("Call-ID"); id != probe {
				t.Errorf("the PBX received %q (Call-ID %q) before the probe: the malformed request was forwarded", got.start, id)
			}
		})
	}
	if len(car.mustServerMap(t).media()) != 0 {
		t.Errorf("media bindings left by refused INVITEs:\n%v", car.mustServerMap(t))
	}
}
