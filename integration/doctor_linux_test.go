package integration

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDoctor creates each cause of missing or one-way audio that the one-way-audio doctor names,
// on purpose, with real peers (sipp with crafted SDP, a home router's NAT and the kernel's SIP
// ALG), and reads the doctor's verdict on the call as an operator would: GET
// /calls/{Call-ID}/doctor (JSON) and `sipcar doctor <Call-ID>` run against the admin endpoint.
// Each subtest asserts that the right leg names the right cause with its key evidence.
func TestDoctor(t *testing.T) {
	for _, c := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"ports-exhausted-and-listing", testDoctorPortsExhausted},
		{"refused", testDoctorRefused},
		{"srtp-one-leg", testDoctorSRTPOneLeg},
		{"codec-mismatch", testDoctorCodecMismatch},
		{"hold", testDoctorHold},
		{"alg", testDoctorALG},
		{"wrong-sdp-address", testDoctorWrongSDPAddress},
		{"unanchored-address", testDoctorUnanchored},
		{"no-media-behind-nat", testDoctorNoMedia},
		{"media-from-other-address", testDoctorMediaOtherAddress},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t)
		})
	}
}

// The plain audio of a call: PCMA both ways.
var (
	pcmaOffer  = []string{"m=audio [auto_media_port] RTP/AVP 8", "a=rtpmap:8 PCMA/8000"}
	pcmaAnswer = []string{"m=audio [media_port] RTP/AVP 8", "a=rtpmap:8 PCMA/8000"}
)

// rtpPackets is how long (20 ms packets) the peers that send media play: longer than their
// calls last, so that a party that sends media sends it to the call's end (a pause of more
// than a few seconds before the end would be a silence the doctor names).
const rtpPackets = 500

// doctorCall is a call through the upstream lab with a generated caller and callee.
type doctorCall struct {
	uac     uacScenario
	uas     uasScenario
	pbxEcho bool // the PBX echoes the caller's RTP
}

// run places the call and waits until both ends completed it and sipcar released its media.
func (c doctorCall) run(t *testing.T, l *upstreamLab) *sipcarProc {
	t.Helper()
	if c.uas.play {
		l.writeLongRTPPcap("pbx", rtpPackets)
	}
	if c.uac.play {
		l.writeLongRTPPcap("phone", rtpPackets)
	}
	pbx := l.uas(l.pbx, "pbx", c.uas, sippOpts{local: pbxAddr.String(), echo: c.pbxEcho})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	phone := l.uac(l.phone, "phone", c.uac, sippOpts{local: phoneAddr.String(), remote: publicAddr.String() + ":5060"})
	phone.succeeded(t, 60*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "the call's BYE")
	return car
}

// testDoctorPortsExhausted gives sipcar relay ports for one call: a first call holds them all,
// a second INVITE is answered 503 by sipcar itself, and the doctor names the port range on both
// legs of the second call. `sipcar doctor` without a Call-ID lists both calls, the first in
// progress.
func testDoctorPortsExhausted(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	l.writeLongRTPPcap("phone-1", 3000) // a minute: it sends until the test ends the call
	pbx := l.uas(l.pbx, "pbx", uasScenario{answer: pcmaAnswer}, sippOpts{local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", "SIPCAR_RTP_PORTS=20000-20003")...)
	// The first call lasts until the test ends it.
	first := l.uac(l.phone, "phone-1", uacScenario{callID: "doctor-first", offer: pcmaOffer, play: true, pauseMS: 120000},
		sippOpts{local: phoneAddr.String(), remote: publicAddr.String() + ":5060"})
	car.waitMap(t, 15*time.Second, "the first call holding every relay port", func(m serverMap) bool {
		return len(m.of("sip-rtp")) == 2 && m.MediaPorts.Free == 0
	})
	second := l.uac(l.phone, "phone-2", uacScenario{callID: "doctor-exhausted", offer: pcmaOffer, refused: 503},
		sippOpts{local: phoneAddr.String(), port: 5070, media: 6100, remote: publicAddr.String() + ":5060"})
	second.succeeded(t, 30*time.Second, 1)

	d := car.waitEnded(t, "doctor-exhausted")
	if !strings.Contains(d.State, "503") {
		t.Errorf("state %q; want it to say sipcar refused the call with 503", d.State)
	}
	for _, side := range []string{"outside", "inside"} {
		checkLeg(t, d, side, "ports-exhausted", "sipcar answered the INVITE 503", "no relay port pair was free", "SIPCAR_RTP_PORTS")
	}
	checkCLILeg(t, car, d, "outside", "503", "no relay port pair was free")

	// The listing: every call in progress or ended in the last hour, newest first.
	out := car.doctorCLI(t)
	iExhausted := strings.Index(out, "call doctor-exhausted: ended")
	iFirst := strings.Index(out, "call doctor-first: in progress")
	if iExhausted < 0 || iFirst < 0 || iExhausted > iFirst {
		t.Errorf("sipcar doctor (no Call-ID) does not list the refused call, then the first call in progress:\n%s", out)
	}
	if !strings.Contains(out, "ports-exhausted: ") {
		t.Errorf("sipcar doctor (no Call-ID) does not name the refused call's cause:\n%s", out)
	}
	b, err := car.get("/doctor")
	if err != nil {
		t.Fatal(err)
	}
	var all []diagnosis
	if err := json.Unmarshal(b, &all); err != nil {
		t.Fatalf("decode /doctor: %v: %s", err, b)
	}
	byID := map[string]diagnosis{}
	for _, d := range all {
		byID[d.CallID] = d
	}
	if len(all) != 2 || byID["doctor-first"].State != "in progress" || !byID["doctor-exhausted"].ended() {
		t.Errorf("/doctor lists %d calls; want the first in progress and the refused one ended:\n%v", len(all), all)
	}
	// The first call carries media both ways (the PBX echoes it): nothing amiss on either leg.
	firstCall := car.waitDiagnosis(t, "doctor-first", "media from both parties", func(d diagnosis) bool {
		return d.leg("outside").Cause == "ok" && d.leg("inside").Cause == "ok"
	})
	checkLeg(t, firstCall, "outside", "ok", "RTP packets")

	first.stop(syscall.SIGTERM)
	pbx.stop(syscall.SIGTERM)
}

// testDoctorRefused: the operator's policy denies the phone; sipcar answers its INVITE 403 and
// the doctor says so, with the rule's warning.
func testDoctorRefused(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	car := l.startSipcar(l.car, l.sipcarEnv("udp", "SIPCAR_POLICY=deny src=198.51.100.20")...)
	phone := l.uac(l.phone, "phone", uacScenario{callID: "doctor-refused", offer: pcmaOffer, refused: 403},
		sippOpts{local: phoneAddr.String(), remote: publicAddr.String() + ":5060"})
	phone.succeeded(t, 30*time.Second, 1)
	d := car.waitEnded(t, "doctor-refused")
	checkLeg(t, d, "outside", "refused", "sipcar answered the INVITE 403", "policy")
	checkLeg(t, d, "inside", "refused", "403")
	if d.leg("outside").Party != "198.51.100.20:5060" {
		t.Errorf("the refused party is %q; want the phone, 198.51.100.20:5060\n%s", d.leg("outside").Party, d)
	}
	checkCLILeg(t, car, d, "outside", "403", "policy")
}

// testDoctorSRTPOneLeg: the phone offers SRTP (RTP/SAVP with SDES keys); the PBX, which knows
// only plain RTP, answers RTP/AVP anyway. sipcar relays media as it is: the phone sends and
// expects SRTP, the PBX plain RTP.
func testDoctorSRTPOneLeg(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	car := doctorCall{
		uac: uacScenario{callID: "doctor-srtp", play: true, pauseMS: 2000, offer: []string{
			"m=audio [auto_media_port] RTP/SAVP 8", "a=rtpmap:8 PCMA/8000",
			"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
		}},
		uas:     uasScenario{answer: pcmaAnswer},
		pbxEcho: true,
	}.run(t, l)
	d := car.waitEnded(t, "doctor-srtp")
	checkLeg(t, d, "outside", "srtp-one-leg", "SRTP on this leg only", "RTP/SAVP with a=crypto", "the other's RTP/AVP")
	checkLeg(t, d, "inside", "srtp-one-leg", "SRTP on the other leg only", "this leg's SDP says RTP/AVP")
	checkCLILeg(t, car, d, "inside", "SRTP on the other leg only")
}

// testDoctorCodecMismatch: the phone offers PCMA only; the PBX answers with its one codec, G.729
// (payload type 18), which the offer did not have.
func testDoctorCodecMismatch(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	car := doctorCall{
		uac:     uacScenario{callID: "doctor-codec", play: true, pauseMS: 2000, offer: pcmaOffer},
		uas:     uasScenario{answer: []string{"m=audio [media_port] RTP/AVP 18", "a=rtpmap:18 G729/8000"}},
		pbxEcho: true,
	}.run(t, l)
	d := car.waitEnded(t, "doctor-codec")
	for _, side := range []string{"outside", "inside"} {
		checkLeg(t, d, side, "codec-mismatch", "has payload types 18", "the offer (INVITE from the outside, 8)")
	}
	checkCLILeg(t, car, d, "outside", "has payload types 18")
}

// testDoctorHold: after some audio the phone puts the call on hold (a re-INVITE with
// a=sendonly, answered a=recvonly) and hangs up while holding it: silence is the hold's, not a
// fault, on both legs.
func testDoctorHold(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	car := doctorCall{
		uac: uacScenario{callID: "doctor-hold", play: true, pauseMS: 1500, offer: pcmaOffer, holdPauseMS: 1500,
			hold: []string{"m=audio [auto_media_port] RTP/AVP 8", "a=rtpmap:8 PCMA/8000", "a=sendonly"}},
		uas:     uasScenario{answer: pcmaAnswer, reinvite: []string{"m=audio [media_port] RTP/AVP 8", "a=rtpmap:8 PCMA/8000", "a=recvonly"}},
		pbxEcho: true,
	}.run(t, l)
	d := car.waitEnded(t, "doctor-hold")
	checkLeg(t, d, "outside", "hold", "this leg's SDP (INVITE at", "a=sendonly", "on hold")
	checkLeg(t, d, "inside", "hold", "this leg's SDP (200 INVITE at", "a=recvonly", "on hold")
	checkCLILeg(t, car, d, "outside", "a=sendonly")
}

// testDoctorWrongSDPAddress: the PBX writes an external address of its own (203.0.113.50, as an
// Asterisk with externip set does) in its SDP instead of its inside address. sipcar sends the
// phone's media there until the PBX's own packets teach it better.
func testDoctorWrongSDPAddress(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	car := doctorCall{
		uac: uacScenario{callID: "doctor-externip", play: true, pauseMS: 2000, offer: pcmaOffer},
		uas: uasScenario{answer: pcmaAnswer, origin: "203.0.113.50", play: true},
	}.run(t, l)
	d := car.waitEnded(t, "doctor-externip")
	checkLeg(t, d, "inside", "wrong-sdp-address", "names media address 203.0.113.50:6000", "outside SIPCAR_INSIDE_NETS",
		"not its signalling address 198.18.0.10")
	// Its media came from its own address: sipcar learned it.
	checkAlso(t, d, "inside", "media-from-other-address", "media comes from 198.18.0.10:6000, not the 203.0.113.50:6000",
		"the party sends from another address than its SDP names")
	checkLeg(t, d, "outside", "ok", "RTP packets")
	checkCLILeg(t, car, d, "inside", "names media address 203.0.113.50:6000")
}

// testDoctorUnanchored: the call has an MSRP session (TCP/MSRP) besides its audio. sipcar does
// not relay TCP media; the PBX's MSRP names its private address, which the phone cannot reach.
func testDoctorUnanchored(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	msrp := func(addr string) []string {
		return []string{"m=message 7000 TCP/MSRP *", "a=accept-types:text/plain", "a=path:msrp://" + addr + ":7000/s1;tcp"}
	}
	car := doctorCall{
		uac:     uacScenario{callID: "doctor-msrp", play: true, pauseMS: 2000, offer: append(append([]string{}, pcmaOffer...), msrp("[media_ip]")...)},
		uas:     uasScenario{answer: append(append([]string{}, pcmaAnswer...), msrp("[media_ip]")...)},
		pbxEcho: true,
	}.run(t, l)
	d := car.waitEnded(t, "doctor-msrp")
	checkLeg(t, d, "inside", "unanchored-address", "stream 1 (message TCP/MSRP)", "not relayed by sipcar", "private address 198.18.0.10")
	checkCLILeg(t, car, d, "inside", "private address 198.18.0.10")
}

// testDoctorALG: the phone sits behind a home router whose SIP ALG (the kernel's nf_nat_sip)
// rewrites what matches the flow: the Via (its port is the source port) and the SDP, but not
// the Contact, which names another port. sipcar sees a Via that is the packet's source next to a
// private Contact: an ALG on the path.
func testDoctorALG(t *testing.T) {
	l := newNATLab(newTestbed(t), true)
	l.writeLongRTPPcap("phone", rtpPackets)
	pbx := l.uas(l.pbx, "pbx", uasScenario{answer: pcmaAnswer}, sippOpts{local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv()...)
	phone := l.uac(l.phone, "phone", uacScenario{callID: "doctor-alg", contactPort: 5070, offer: pcmaOffer, play: true, pauseMS: 2000},
		sippOpts{local: natPhoneAddr.String(), remote: "198.51.100.1:5060"})
	phone.succeeded(t, 60*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	d := car.waitEnded(t, "doctor-alg")
	checkLeg(t, d, "outside", "alg", "rewrote the Via of its INVITE to 198.51.100.20:5060", "Contact 198.18.0.130:5070", "turn the ALG off")
	checkCLILeg(t, car, d, "outside", "Contact 198.18.0.130:5070")
}

// natCall places a call from the phone behind the home router to the PBX, which plays media;
// the phone plays media when phoneMedia is set. It returns sipcar and the phone's sipp.
func (l *natLab) natCall(t *testing.T, callID string, phoneMedia bool, pauseMS int) (*sipcarProc, *sippProc, *sippProc) {
	t.Helper()
	l.writeLongRTPPcap("pbx", rtpPackets)
	if phoneMedia {
		l.writeLongRTPPcap("phone", rtpPackets)
	}
	pbx := l.uas(l.pbx, "pbx", uasScenario{answer: pcmaAnswer, play: true}, sippOpts{local: pbxAddr.String()})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv()...)
	phone := l.uac(l.phone, "phone", uacScenario{callID: callID, offer: pcmaOffer, play: phoneMedia, pauseMS: pauseMS},
		sippOpts{local: natPhoneAddr.String(), remote: "198.51.100.1:5060"})
	return car, phone, pbx
}

// testDoctorNoMedia: a phone behind a NAT (no ALG) that never sends RTP. While the call is up
// and after it ended, the doctor names the phone's leg silent since the answer, with the NAT
// its signalling came through; the PBX's leg, which sent media throughout, is fine.
func testDoctorNoMedia(t *testing.T) {
	l := newNATLab(newTestbed(t), false)
	car, phone, pbx := l.natCall(t, "doctor-silent", false, 4000)
	d := car.waitDiagnosis(t, "doctor-silent", "the call in progress", func(d diagnosis) bool { return d.State == "in progress" })
	checkLeg(t, d, "outside", "no-media", "no RTP from this party at relay port 198.51.100.1:", "since the answer at",
		"its SDP named 198.18.0.130:6000", "through a NAT (Via 198.18.0.130:5060, packets from 198.51.100.20:5060)")
	phone.succeeded(t, 60*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	d = car.waitEnded(t, "doctor-silent")
	checkLeg(t, d, "outside", "no-media", "no RTP from this party", "through a NAT (Via 198.18.0.130:5060, packets from 198.51.100.20:5060)")
	checkLeg(t, d, "inside", "ok", "RTP packets")
	checkCLILeg(t, car, d, "outside", "no RTP from this party", "through a NAT")
}

// testDoctorMediaOtherAddress: a phone behind a NAT (no ALG) names its private address in its
// SDP; its media arrives from the router's public address. sipcar latched on it: audio works,
// and the doctor shows where the media came from against what the SDP said.
func testDoctorMediaOtherAddress(t *testing.T) {
	l := newNATLab(newTestbed(t), false)
	car, phone, pbx := l.natCall(t, "doctor-natmedia", true, 3000)
	phone.succeeded(t, 60*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	d := car.waitEnded(t, "doctor-natmedia")
	checkLeg(t, d, "outside", "media-from-other-address", "media comes from 198.51.100.20:", "not the 198.18.0.130:6000 its SDP named",
		"sipcar latched on the source")
	checkLeg(t, d, "inside", "ok", "RTP packets")
	checkCLILeg(t, car, d, "outside", "media comes from 198.51.100.20:")
}
