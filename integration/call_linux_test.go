package integration

import (
	"bytes"
	"net/netip"
	"regexp"
	"testing"
	"time"
)

// TestCall is the canonical scenario in upstream mode: a phone outside (sipp UAC) calls the
// PBX inside (sipp UAS, echoing RTP) through sipcar, media flows both ways through sipcar's
// relay ports, the call ends with BYE, and nothing of the inside shows on sipcar's public side.
func TestCall(t *testing.T) {
	cases := []struct {
		name      string
		transport string // SIP transport, the same on both sides
		mediaMode string // SIPCAR_MEDIA_MODE
		plan      addrPlan
	}{
		{"udp", "udp", "fallback", plan4},
		{"udp-fanin", "udp", "fanin", plan4},
		{"tcp", "tcp", "fallback", plan4},
		{"udp-ipv6", "udp", "fallback", plan6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			testCall(t, c.transport, c.mediaMode, c.plan)
		})
	}
}

func testCall(t *testing.T, transport, mediaMode string, p addrPlan) {
	l := newUpstreamLabPlan(newTestbed(t), p)
	tcp := transport == "tcp"
	public := l.capture(l.car, "out0", netip.AddrPortFrom(p.phone, 9))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: p.pbx.String(), tcp: tcp, echo: true})
	l.waitListening(l.pbx, transport, 5060)
	car := l.startSipcar(l.car, l.sipcarEnv(transport, "SIPCAR_MEDIA_MODE="+mediaMode)...)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: p.phone.String(),
		remote: hostPort(p.public, 5060), tcp: tcp, pauseMS: 3000, rtpPcap: true})

	// Mid-call: each side's media binding has latched its peer and carried packets both ways.
	phoneMedia := netip.AddrPortFrom(p.phone, 6000)
	pbxMedia := netip.AddrPortFrom(p.pbx, 6000)
	car.waitMap(t, 15*time.Second, "media both ways through both sip-rtp bindings", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 2 {
			return false
		}
		for _, e := range rtp {
			if e.PacketsSent == 0 || e.PacketsReceived == 0 || e.Peer == nil {
				return false
			}
			// The binding on the inside relays to the phone and latched the PBX, and the other
			// way round.
			want := map[string][2]netip.AddrPort{"inside": {phoneMedia, pbxMedia}, "outside": {pbxMedia, phoneMedia}}[e.Faces]
			if e.ForwardTo != want[0] || *e.Peer != want[1] {
				return false
			}
		}
		return true
	})

	// The vendors' text display of the session table shows the same.
	if text, err := car.get("/sessions?format=text"); err != nil {
		t.Error(err)
	} else if n := len(sessionLine.FindAll(text, -1)); n != 2 {
		t.Errorf("mid-call /sessions?format=text has %d sip-rtp lines with packets both ways; want 2:\n%s", n, text)
	}

	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	if text, err := car.get("/servermap?format=text"); err != nil {
		t.Error(err)
	} else if bytes.Contains(text, []byte("sip-rtp")) || bytes.Contains(text, []byte("sip-rtcp")) {
		t.Errorf("/servermap?format=text after BYE still shows media:\n%s", text)
	}

	checkPublicCapture(t, public.stop(t), p, "INVITE ", "ACK ", "BYE ", "SIP/2.0 200 ")
}

// checkPublicCapture checks what crossed sipcar's public interface: the SIP messages named by
// their start lines are there, no SIP message names an inside address, no packet comes from or
// goes to one, and RTP went both ways between the phone and sipcar.
func checkPublicCapture(t *testing.T, pkts []packet, plan addrPlan, starts ...string) {
	t.Helper()
	msgs := sipMessages(pkts)
	for _, s := range starts {
		if countStartLines(msgs, s) == 0 {
			t.Errorf("no %q message in the capture on sipcar's public interface (%d SIP messages)", s, len(msgs))
		}
	}
	for _, m := range msgs {
		if bytes.Contains(m, []byte(plan.insideText)) {
			t.Errorf("an inside address leaked to the public side:\n%s", m)
		}
	}
	toPhone, fromPhone := 0, 0
	for _, p := range pkts {
		if plan.insideNet.Contains(p.src.Addr()) || plan.insideNet.Contains(p.dst.Addr()) {
			t.Errorf("packet with an inside address on the public side: %v -> %v %s", p.src, p.dst, p.proto)
		}
		if p.proto == "udp" && isRTP(p.payload) {
			switch {
			case p.src == netip.AddrPortFrom(plan.phone, 6000) && p.dst.Addr() == plan.public:
				fromPhone++
			case p.dst == netip.AddrPortFrom(plan.phone, 6000) && p.src.Addr() == plan.public:
				toPhone++
			}
		}
	}
	// The phone plays 100 packets; the PBX echoes them.
	if fromPhone < 50 || toPhone < 50 {
		t.Errorf("RTP on the public side: %d packets from the phone to sipcar, %d back; want at least 50 each way",
			fromPhone, toPhone)
	}
	t.Logf("public side: %d SIP messages, RTP %d from the phone, %d to it", len(msgs), fromPhone, toPhone)
}

// sessionLine matches a sip-rtp line of the text session table with packets both ways:
//
//	sip-rtp  198.18.0.10:6000[198.51.100.1:26082] --> 198.51.100.20:6000  pkts 119/119  bytes 29988/29988
var sessionLine = regexp.MustCompile(`(?m)^sip-rtp\s.*\spkts [1-9]\d*/[1-9]\d*\s`)

// isRTP reports whether a UDP payload looks like RTP (version 2, not RTCP).
func isRTP(b []byte) bool {
	return len(b) >= 12 && b[0]>>6 == 2 && (b[1]&0x7f < 72 || b[1]&0x7f > 76)
}
