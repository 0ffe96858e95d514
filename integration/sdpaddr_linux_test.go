package integration

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestAnswerWithBracketedIPv6 is sipp's own IPv6 SDP: a PBX answers with
// "c=IN IP6 [2001:db8:a::10]" (sipp's [local_ip] keeps the brackets, which SDP does not allow).
// sipcar may translate the address or drop the answer as malformed, but the PBX's inside
// address must not reach the phone.
func TestAnswerWithBracketedIPv6(t *testing.T) {
	t.Parallel()
	p := plan6
	l := newUpstreamLabPlan(newTestbed(t), p)
	pbx := l.udpPeer(l.pbx, netip.AddrPortFrom(p.pbx, 5060))
	l.startSipcar(l.car, l.sipcarEnv("udp")...)
	phone := l.udpPeer(l.phone, netip.AddrPortFrom(p.phone, 5070))
	sipcarAddr := netip.AddrPortFrom(p.public, 5060)

	phone.send(t, sipcarAddr, buildSIP("INVITE sip:pbx@[2001:db8:b::1]:5060 SIP/2.0", []string{
		"Via: SIP/2.0/UDP [2001:db8:b::20]:5070;branch=z9hG4bKv6brackets",
		"From: <sip:phone@[2001:db8:b::1]>;tag=v6",
		"To: <sip:pbx@[2001:db8:b::1]>",
		"Call-ID: bracketed-v6",
		"CSeq: 1 INVITE",
		"Contact: <sip:phone@[2001:db8:b::20]:5070>",
		"Max-Forwards: 70",
		"Content-Type: application/sdp",
	}, "v=0\r\no=- 1 1 IN IP6 2001:db8:b::20\r\ns=-\r\nc=IN IP6 2001:db8:b::20\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\n"))
	req := pbx.recv(t, 5*time.Second, "the INVITE at the PBX", isRequest("INVITE"))
	reply, err := req.viaAddr()
	if err != nil {
		t.Fatal(err)
	}
	pbx.send(t, reply, response(req, 200, "OK", "v6", []string{"Contact: <sip:pbx@[2001:db8:a::10]:5060>", "Content-Type: application/sdp"},
		"v=0\r\no=user1 1 1 IN IP6 [2001:db8:a::10]\r\ns=-\r\nc=IN IP6 [2001:db8:a::10]\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n"))

	resp, err := phone.tryRecv(3*time.Second, isResponse("INVITE", 0))
	switch {
	case errors.Is(err, errNothing):
		t.Log("sipcar dropped the answer it could not read")
	case err != nil:
		t.Fatal(err)
	default:
		t.Logf("the phone got %q with SDP:\n%s", resp.start, resp.body)
		if bytes.Contains(resp.raw, []byte(p.insideText)) {
			for _, l := range strings.Split(string(resp.raw), "\r\n") {
				if strings.Contains(l, p.insideText) {
					t.Errorf("the PBX's inside address reached the phone: %q", l)
				}
			}
		}
	}
}
