package integration

import (
	"bytes"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestTransparentCall is the canonical scenario on a NAT gateway (transparent mode): a phone
// inside calls a server on the internet side directly; the gateway's TPROXY rules hand its SIP
// to sipcar, which relays it from the gateway's public address. The call succeeds (sipp UAC and
// UAS, RTP echoed), media flows both ways through sipcar's relay ports (RTP by sipp, RTCP sent
// by the test to the advertised ports + 1), the server map and session table show the call in
// the canonical shape mid-call and no media after BYE, the phone gets its replies from the
// server it addressed, and nothing of the inside shows on the public side.
func TestTransparentCall(t *testing.T) {
	for _, transport := range []string{"udp", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			testTransparentCall(t, transport)
		})
	}
}

func testTransparentCall(t *testing.T, transport string) {
	l := newGatewayLab(newTestbed(t))
	tcp := transport == "tcp"
	l.interceptSIP()
	lan := l.capture(l.gw, "lan0", netip.AddrPortFrom(gwPhoneAddr, 9))
	wan := l.capture(l.gw, "wan0", netip.AddrPortFrom(gwServerAddr, 9))
	srv := l.sipp(l.srv, "server", sippOpts{scenario: "uas_media.xml", local: gwServerAddr.String(), tcp: tcp, echo: true})
	l.waitListening(l.srv, transport, 5060)
	car := l.startSipcar(l.gw, l.sipcarEnv()...)
	server := netip.AddrPortFrom(gwServerAddr, 5060)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: gwPhoneAddr.String(),
		remote: server.String(), tcp: tcp, pauseMS: 6000, rtpPcap: true})

	phoneMedia := netip.AddrPortFrom(gwPhoneAddr, 6000)
	srvMedia := netip.AddrPortFrom(gwServerAddr, 6000)
	// Mid-call: the phone's media is published at the gateway's public address and the server's
	// at its inside address; each binding latched the right peer and carried packets both ways.
	m := car.waitMap(t, 15*time.Second, "media both ways through both sip-rtp bindings", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 2 {
			return false
		}
		for _, e := range rtp {
			if e.PacketsSent == 0 || e.PacketsReceived == 0 || e.Peer == nil {
				return false
			}
			switch e.Faces {
			case "outside":
				if e.Address.Addr() != gwPublicAddr || e.ForwardTo != phoneMedia || *e.Peer != srvMedia {
					return false
				}
			case "inside":
				if e.Address.Addr() != gwInsideAddr || e.ForwardTo != srvMedia || *e.Peer != phoneMedia {
					return false
				}
			default:
				return false
			}
		}
		return true
	})
	checkCanonicalDisplay(t, car, transport)

	// RTCP both ways, to the ports the SDP advertised (RTP + 1).
	var pubRTCP, inRTCP netip.AddrPort
	for _, e := range m.of("sip-rtcp") {
		switch {
		case e.Faces == "outside" && e.ForwardTo == netip.AddrPortFrom(gwPhoneAddr, 6001):
			pubRTCP = e.Address
		case e.Faces == "inside" && e.ForwardTo == netip.AddrPortFrom(gwServerAddr, 6001):
			inRTCP = e.Address
		}
	}
	for _, e := range m.of("sip-rtp") {
		want := map[string]netip.AddrPort{"outside": pubRTCP, "inside": inRTCP}[e.Faces]
		if want != netip.AddrPortFrom(e.Address.Addr(), e.Address.Port()+1) || e.Address.Port()%2 != 0 {
			t.Errorf("sip-rtp binding %v: its sip-rtcp binding is %v; want an even RTP port and RTCP one above it", e, want)
		}
	}
	if pubRTCP.IsValid() && inRTCP.IsValid() {
		phoneRTCP := l.udpPeer(l.phone, netip.AddrPortFrom(gwPhoneAddr, 6001))
		srvRTCP := l.udpPeer(l.srv, netip.AddrPortFrom(gwServerAddr, 6001))
		if n, from := relayRTCP(t, srvRTCP, pubRTCP, phoneRTCP, 5); n != 5 {
			t.Errorf("RTCP server -> %v: %d of 5 reports reached the phone", pubRTCP, n)
		} else if from != inRTCP {
			t.Errorf("RTCP reached the phone from %v; want sipcar's inside RTCP port %v", from, inRTCP)
		}
		if n, from := relayRTCP(t, phoneRTCP, inRTCP, srvRTCP, 5); n != 5 {
			t.Errorf("RTCP phone -> %v: %d of 5 reports reached the server", inRTCP, n)
		} else if from != pubRTCP {
			t.Errorf("RTCP reached the server from %v; want sipcar's public RTCP port %v", from, pubRTCP)
		}
		// The RTCP bindings latched their peers, and the session table shows the RTCP flows
		// ("Each media flow that matches a pinhole becomes a session (sip-rtp, sip-rtcp)").
		latched := func(m serverMap) bool {
			n := 0
			for _, e := range m.of("sip-rtcp") {
				want := map[string]netip.AddrPort{"outside": netip.AddrPortFrom(gwServerAddr, 6001), "inside": netip.AddrPortFrom(gwPhoneAddr, 6001)}[e.Faces]
				if e.Peer != nil && *e.Peer == want {
					n++
				}
			}
			return n == 2
		}
		if ok, state := poll(5*time.Second, func() (bool, string) {
			m, err := car.serverMap()
			if err != nil {
				return false, err.Error()
			}
			return latched(m), m.String()
		}); !ok {
			t.Errorf("after RTCP both ways, the sip-rtcp bindings did not latch the server's and the phone's RTCP ports:\n%s", state)
		}
		rtcpFlow := regexp.MustCompile(`(?m)^sip-rtcp\s.*\spkts \d+/[1-9]\d*\s`)
		if ok, state := poll(3*time.Second, func() (bool, string) {
			text, err := car.get("/sessions?format=text")
			if err != nil {
				return false, err.Error()
			}
			return len(rtcpFlow.FindAll(text, -1)) == 2, string(text)
		}); !ok {
			t.Errorf("after RTCP both ways, the session table has no two sip-rtcp flows with packets (DESIGN.md: each media flow that matches a pinhole becomes a session, sip-rtp or sip-rtcp):\n%s", state)
		}
	} else {
		t.Errorf("no sip-rtcp bindings for the phone's and the server's RTCP (6001):\n%v", m)
	}

	phone.succeeded(t, 30*time.Second, 1)
	srv.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	if text, err := car.get("/servermap?format=text"); err != nil {
		t.Error(err)
	} else if bytes.Contains(text, []byte("sip-rtp")) || bytes.Contains(text, []byte("sip-rtcp")) {
		t.Errorf("/servermap?format=text after BYE still shows media:\n%s", text)
	}

	// The phone sees every reply come from the server it addressed, not from sipcar.
	lanMsgs := wireMessages(lan.stop(t))
	replies := 0
	for _, w := range lanMsgs {
		if w.status() == 0 || w.dst.Addr() != gwPhoneAddr {
			continue
		}
		replies++
		if w.src != server {
			t.Errorf("the phone got %q from %v; want it from the server it addressed, %v", firstLine(w.raw), w.src, server)
		}
	}
	if replies < 3 { // 180, 200 to the INVITE, 200 to the BYE
		t.Errorf("%d SIP responses reached the phone on lan0; want at least 3 (180, 200, 200)", replies)
	}

	// Nothing of the inside on the public side: no packet from or to an inside address, no
	// inside address where a message says where to reach its sender; media went both ways
	// between the server and the gateway's public address.
	wanPkts := wan.stop(t)
	checkNoInsideOnPublic(t, wanPkts)
	wanMsgs := wireMessages(wanPkts)
	for _, start := range []string{"INVITE ", "ACK ", "BYE ", "SIP/2.0 180 ", "SIP/2.0 200 "} {
		n := 0
		for _, w := range wanMsgs {
			if bytes.HasPrefix(w.raw, []byte(start)) {
				n++
			}
		}
		if n == 0 {
			t.Errorf("no %q message on the public side (%d SIP messages)", start, len(wanMsgs))
		}
	}
	for _, w := range wanMsgs {
		for _, f := range leakedFields(w.raw, gwInsideText) {
			if isAddressField(f) {
				t.Errorf("an inside address in %s on the public side:\n%s", f, w.raw)
			}
		}
	}
	toSrv, fromSrv := rtpTo(wanPkts, srvMedia), 0
	for _, p := range wanPkts {
		if p.proto == "udp" && p.src == srvMedia && p.dst.Addr() == gwPublicAddr && isRTP(p.payload) {
			fromSrv++
		}
	}
	if toSrv < 50 || fromSrv < 50 {
		t.Errorf("RTP on the public side: %d packets to the server, %d from it to the gateway; want at least 50 each way", toSrv, fromSrv)
	}
	t.Logf("public side: %d SIP messages, RTP %d to the server, %d back", len(wanMsgs), toSrv, fromSrv)
}

// firstLine returns the start line of a message.
func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\r\n"))
	return string(line)
}

// checkCanonicalDisplay checks the text displays mid-call against the canonical scenario
// (DESIGN.md): the server map has the phone's signaling binding and its media pair at the
// gateway's public address,
//
//	Type: ALG, ANY -> 198.51.100.1:PORT[198.18.0.2:5060], Protocol: udp(Appro: sip), ...
//	Type: ALG, ANY -> 198.51.100.1:EVEN[198.18.0.2:6000], Protocol: udp(Appro: sip-rtp), ...
//	Type: ALG, ANY -> 198.51.100.1:EVEN+1[198.18.0.2:6001], Protocol: udp(Appro: sip-rtcp), ...
//
// (a latched media binding shows its peer in place of ANY), and the session table shows the
// media flow and the signaling flow:
//
//	sip-rtp  198.18.0.2:6000[198.51.100.1:EVEN] --> 198.51.100.10:6000  pkts N/M ...
//	sip  198.18.0.2:5060[198.51.100.1:PORT] +-> 198.51.100.10:5060 ...
func checkCanonicalDisplay(t *testing.T, car *sipcarProc, transport string) {
	t.Helper()
	text, err := car.get("/servermap?format=text")
	if err != nil {
		t.Error(err)
		return
	}
	// Over TCP the phone's source port is whatever its connection got.
	phoneSIP := `5060`
	if transport == "tcp" {
		phoneSIP = `\d+`
	}
	sig := regexp.MustCompile(`(?m)^Type: ALG, ANY -> 198\.51\.100\.1:(\d+)\[198\.18\.0\.2:` + phoneSIP + `\], Protocol: ` + transport + `\(Appro: sip\), Left-Time: \d\d:\d\d:\d\d$`)
	rtp := regexp.MustCompile(`(?m)^Type: ALG, (?:ANY|198\.51\.100\.10:6000) -> 198\.51\.100\.1:(\d+)\[198\.18\.0\.2:6000\], Protocol: udp\(Appro: sip-rtp\), Left-Time: \d\d:\d\d:\d\d$`)
	sm, rm := sig.FindSubmatch(text), rtp.FindSubmatch(text)
	if sm == nil {
		t.Errorf("mid-call server map has no line %q:\n%s", sig, text)
	}
	if rm == nil {
		t.Errorf("mid-call server map has no line %q:\n%s", rtp, text)
	} else {
		port, _ := strconv.Atoi(string(rm[1]))
		rtcp := regexp.MustCompile(fmt.Sprintf(`(?m)^Type: ALG, (?:ANY|198\.51\.100\.10:6001) -> 198\.51\.100\.1:%d\[198\.18\.0\.2:6001\], Protocol: udp\(Appro: sip-rtcp\)`, port+1))
		if port%2 != 0 || !rtcp.Match(text) {
			t.Errorf("mid-call server map: RTP at %d; want it even, and a line %q:\n%s", port, rtcp, text)
		}
	}
	t.Logf("mid-call server map:\n%s", text)

	sessions, err := car.get("/sessions?format=text")
	if err != nil {
		t.Error(err)
		return
	}
	t.Logf("mid-call session table:\n%s", sessions)
	if rm != nil {
		media := regexp.MustCompile(`(?m)^sip-rtp\s+198\.18\.0\.2:6000\[198\.51\.100\.1:` + string(rm[1]) + `\] --> 198\.51\.100\.10:6000\s+pkts [1-9]\d*/[1-9]\d*\s`)
		if !media.Match(sessions) {
			t.Errorf("mid-call session table has no line %q:\n%s", media, sessions)
		}
	}
	if sm != nil {
		signaling := regexp.MustCompile(`(?m)^sip\s+198\.18\.0\.2:` + phoneSIP + `\[198\.51\.100\.1:` + string(sm[1]) + `\] \+-> 198\.51\.100\.10:5060\s`)
		if !signaling.Match(sessions) {
			t.Errorf("mid-call session table has no signaling flow %q (DESIGN.md, canonical scenario step 1):\n%s", signaling, sessions)
		}
	}
}
