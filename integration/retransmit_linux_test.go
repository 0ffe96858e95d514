package integration

import (
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// TestRetransmission sends an INVITE twice (a UDP retransmission: the same bytes) and has the
// PBX send its 200 OK twice: each copy leaves sipcar with the same relay address in its SDP and
// the same Via, and the server map holds one pair per side, not two. Then ACK and BYE end the
// call, in-dialog requests going where the 200's Contact says.
func TestRetransmission(t *testing.T) {
	t.Parallel()
	l := newUpstreamLab(newTestbed(t))
	pbx := l.udpPeer(l.pbx, netip.AddrPortFrom(pbxAddr, 5060))
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	phone := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	sipcarAddr := netip.AddrPortFrom(publicAddr, 5060)

	invite := buildSIP("INVITE sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/UDP 198.51.100.20:5070;branch=z9hG4bKretrans1",
		"From: <sip:phone@198.51.100.1>;tag=ph1",
		"To: <sip:pbx@198.51.100.1>",
		"Call-ID: retransmitted",
		"CSeq: 1 INVITE",
		"Contact: <sip:phone@198.51.100.20:5070>",
		"Max-Forwards: 70",
		"Content-Type: application/sdp",
	}, offer(netip.AddrPortFrom(phoneAddr, 7000)))

	var offers [2]netip.AddrPort
	var vias [2]string
	var req *sipMsg
	for i := range 2 {
		phone.send(t, sipcarAddr, invite)
		req = pbx.recv(t, 5*time.Second, "the INVITE at the PBX", isRequest("INVITE"))
		var err error
		if offers[i], err = req.media(); err != nil {
			t.Fatal(err)
		}
		vias[i] = req.header("Via")
	}
	if offers[0] != offers[1] || vias[0] != vias[1] {
		t.Errorf("the retransmitted INVITE left sipcar differently:\nfirst:  SDP %v, Via %s\nsecond: SDP %v, Via %s",
			offers[0], vias[0], offers[1], vias[1])
	}
	if !insideNet.Contains(offers[0].Addr()) {
		t.Errorf("the PBX was offered media at %v; want sipcar's inside address", offers[0])
	}
	// The offer's pair and the pair reserved for its answer: once, not twice.
	m := car.mustServerMap(t)
	if len(m.of("sip-rtp")) != 2 || m.MediaPorts.InUse != 4 {
		t.Errorf("after the INVITE and its retransmission: %d sip-rtp bindings, %d media ports in use; want 2 and 4\n%v",
			len(m.of("sip-rtp")), m.MediaPorts.InUse, m)
	}

	// The PBX answers twice (its 200 is retransmitted until the ACK).
	reply, err := req.viaAddr()
	if err != nil {
		t.Fatal(err)
	}
	ok := response(req, 200, "OK", "pbx1", []string{"Contact: <sip:pbx@198.18.0.10:5060>", "Content-Type: application/sdp"},
		offer(netip.AddrPortFrom(pbxAddr, 8000)))
	var answers [2]netip.AddrPort
	var resp *sipMsg
	for i := range 2 {
		pbx.send(t, reply, ok)
		resp = phone.recv(t, 5*time.Second, "the 200 OK at the phone", isResponse("INVITE", 200))
		if answers[i], err = resp.media(); err != nil {
			t.Fatal(err)
		}
	}
	if answers[0] != answers[1] {
		t.Errorf("the retransmitted 200 OK offered different media: %v, then %v", answers[0], answers[1])
	}
	if answers[0].Addr() != publicAddr {
		t.Errorf("the phone was answered with media at %v; want sipcar's public address %v", answers[0], publicAddr)
	}
	m = car.mustServerMap(t)
	if len(m.of("sip-rtp")) != 2 || m.MediaPorts.InUse != 4 {
		t.Errorf("after the 200 OK and its retransmission: %d sip-rtp bindings, %d media ports in use; want 2 and 4\n%v",
			len(m.of("sip-rtp")), m.MediaPorts.InUse, m)
	}

	// ACK and BYE go to the remote target: the 200's Contact, which must be sipcar's.
	target := resp.contactURI()
	dst, err := uriAddr(target)
	if err != nil {
		t.Fatal(err)
	}
	if dst.Addr() != publicAddr {
		t.Fatalf("the PBX's Contact reached the phone as %q; want sipcar's public address", target)
	}
	inDialog := func(method string, cseq int, branch string) []byte {
		return buildSIP(method+" "+target+" SIP/2.0", []string{
			"Via: SIP/2.0/UDP 198.51.100.20:5070;branch=" + branch,
			"From: <sip:phone@198.51.100.1>;tag=ph1",
			"To: " + resp.header("To"),
			"Call-ID: retransmitted",
			"CSeq: " + strconv.Itoa(cseq) + " " + method,
			"Max-Forwards: 70",
		}, "")
	}
	phone.send(t, dst, inDialog("ACK", 1, "z9hG4bKack1"))
	pbx.recv(t, 5*time.Second, "the ACK at the PBX", isRequest("ACK"))
	phone.send(t, dst, inDialog("BYE", 2, "z9hG4bKbye1"))
	bye := pbx.recv(t, 5*time.Second, "the BYE at the PBX", isRequest("BYE"))
	byeReply, err := bye.viaAddr()
	if err != nil {
		t.Fatal(err)
	}
	pbx.send(t, byeReply, response(bye, 200, "OK", "pbx1", nil, ""))
	phone.recv(t, 5*time.Second, "the 200 OK for the BYE at the phone", isResponse("BYE", 200))
	car.waitNoMedia(t, "BYE")
}
