package integration

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// goLab is the upstream lab with sipcar and Go peers: the phone's SIP (5070) and media (7000)
// sockets outside, the PBX's SIP (5060) and media (8000) sockets inside.
type goLab struct {
	*upstreamLab
	sipcar                             *sipcarProc
	phoneSIP, phoneRTP, pbxSIP, pbxRTP *udpPeer
}

// newGoLab builds the lab and starts sipcar with the lab's environment and env.
func newGoLab(t *testing.T, env ...string) *goLab {
	t.Helper()
	l := &goLab{upstreamLab: newUpstreamLab(newTestbed(t))}
	l.pbxSIP = l.udpPeer(l.pbx, netip.AddrPortFrom(pbxAddr, 5060))
	l.pbxRTP = l.udpPeer(l.pbx, netip.AddrPortFrom(pbxAddr, 8000))
	l.sipcar = l.startSipcar(l.car, l.sipcarEnv("udp", env...)...)
	l.phoneSIP = l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	l.phoneRTP = l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 7000))
	return l
}

// bothWays sends an RTP packet each way between the phone's media socket (to answered, the
// address its answer named) and the PBX's (to offered) and checks each arrives from the
// address the other side was given.
func (l *goLab) bothWays(t *testing.T, offered, answered netip.AddrPort, seq uint16, what string) {
	t.Helper()
	l.phoneRTP.send(t, answered, rtp(0xca, seq))
	expectRTP(t, l.pbxRTP, 0xca, offered, "the caller's media "+what)
	l.pbxRTP.send(t, offered, rtp(0xea, seq))
	expectRTP(t, l.phoneRTP, 0xea, answered, "the callee's media "+what)
}

// goCall is a call placed by a Go phone outside through sipcar to a Go PBX inside (the upstream
// lab), for tests that need to send exactly what they check: the phone sends an INVITE with an
// SDP body, the PBX receives it; the test then answers as it needs.
type goCall struct {
	t          *testing.T
	phone, pbx *udpPeer
	callID     string
	invite     *sipMsg        // the INVITE as the PBX got it
	offered    netip.AddrPort // the media address the PBX was offered (sipcar's inside pair)
	reply      netip.AddrPort // where the PBX's responses go (the INVITE's top Via)
}

// placeGoCall sends the phone's INVITE for callID with body as its SDP to sipcar's public
// listener and returns the call once the PBX has the INVITE.
func placeGoCall(t *testing.T, phone, pbx *udpPeer, callID, body string) *goCall {
	t.Helper()
	phone.send(t, netip.AddrPortFrom(publicAddr, 5060), buildSIP("INVITE sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/UDP " + phone.addr.String() + ";branch=z9hG4bK" + callID,
		"From: <sip:phone@198.51.100.1>;tag=caller",
		"To: <sip:pbx@198.51.100.1>",
		"Call-ID: " + callID,
		"CSeq: 1 INVITE",
		"Contact: <sip:phone@" + phone.addr.String() + ">",
		"Max-Forwards: 70",
		"Content-Type: application/sdp",
	}, body))
	c := &goCall{t: t, phone: phone, pbx: pbx, callID: callID}
	c.invite = pbx.recv(t, 5*time.Second, "the INVITE at the PBX", isRequest("INVITE"))
	var err error
	if c.offered, err = c.invite.media(); err != nil {
		t.Fatal(err)
	}
	if c.reply, err = c.invite.viaAddr(); err != nil {
		t.Fatal(err)
	}
	return c
}

// respond sends a response to the INVITE from the PBX, under To tag tag, with body as its SDP
// (none when empty).
func (c *goCall) respond(code int, reason, tag, body string) {
	c.t.Helper()
	var extra []string
	if body != "" {
		extra = []string{"Contact: <sip:pbx@" + c.pbx.addr.String() + ">", "Content-Type: application/sdp"}
	}
	c.pbx.send(c.t, c.reply, response(c.invite, code, reason, tag, extra, body))
}

// answer sends the PBX's 200 OK with body under To tag tag and returns it as the phone got it,
// with the media address it names.
func (c *goCall) answer(tag, body string) (*sipMsg, netip.AddrPort) {
	c.t.Helper()
	c.respond(200, "OK", tag, body)
	ok := c.phone.recv(c.t, 5*time.Second, "the 200 OK at the phone", isResponse("INVITE", 200))
	media, err := ok.media()
	if err != nil {
		c.t.Fatal(err)
	}
	return ok, media
}

// inDialog is a request from the phone in the dialog that ok (a 2xx to the INVITE) set up, sent
// to its remote target.
func (c *goCall) inDialog(ok *sipMsg, method string, cseq int) (netip.AddrPort, []byte) {
	c.t.Helper()
	target, err := uriAddr(ok.contactURI())
	if err != nil {
		c.t.Fatal(err)
	}
	return target, buildSIP(method+" "+ok.contactURI()+" SIP/2.0", []string{
		"Via: SIP/2.0/UDP " + c.phone.addr.String() + ";branch=z9hG4bK" + c.callID + method + strconv.Itoa(cseq) + toTag(ok),
		"From: <sip:phone@198.51.100.1>;tag=caller",
		"To: " + ok.header("To"),
		"Call-ID: " + c.callID,
		"CSeq: " + strconv.Itoa(cseq) + " " + method,
		"Max-Forwards: 70",
	}, "")
}

// toTag returns the To tag of m.
func toTag(m *sipMsg) string {
	_, tag, _ := strings.Cut(m.header("To"), ";tag=")
	tag, _, _ = strings.Cut(tag, ";")
	return tag
}

// ack sends the phone's ACK of ok; the PBX receives it.
func (c *goCall) ack(ok *sipMsg) {
	c.t.Helper()
	dst, msg := c.inDialog(ok, "ACK", 1)
	c.phone.send(c.t, dst, msg)
	c.pbx.recv(c.t, 5*time.Second, "the ACK at the PBX", isRequest("ACK"))
}

// bye ends the dialog of ok: the phone's BYE reaches the PBX, whose 200 reaches the phone.
func (c *goCall) bye(ok *sipMsg) {
	c.t.Helper()
	dst, msg := c.inDialog(ok, "BYE", 2)
	c.phone.send(c.t, dst, msg)
	req := c.pbx.recv(c.t, 5*time.Second, "the BYE at the PBX", isRequest("BYE"))
	back, err := req.viaAddr()
	if err != nil {
		c.t.Fatal(err)
	}
	c.pbx.send(c.t, back, response(req, 200, "OK", "", nil, ""))
	c.phone.recv(c.t, 5*time.Second, "the 200 OK of the BYE at the phone", isResponse("BYE", 200))
}
