package relay

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A trickle-ICE offer (c=0.0.0.0, m= port 9, no candidate yet) gets relay ports like any other
// stream: the PBX is told a real address and port, not 0.0.0.0:9, and the phone's media reaches
// the PBX once its first packet taught sipcar where the phone is.
func TestTrickleOfferAnchored(t *testing.T) {
	b := newLoopbed(t, nil)
	pbxRTP := listenRTP(t, "127.0.0.2")
	phoneRTP := listenRTP(t, "127.0.0.3")
	offer := "v=0\no=- 1 2 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 9 UDP/TLS/RTP/SAVPF 0\nc=IN IP4 0.0.0.0\n" +
		"a=ice-ufrag:EsAw\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\na=ice-options:trickle\n" +
		"a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5E\n" +
		"a=setup:actpass\na=rtcp-mux\na=rtpmap:0 PCMU/8000\n"
	b.send(b.phone, b.sip, withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKtr\n"+
		"From: <sip:200@127.0.0.1>;tag=tr\nTo: <sip:100@127.0.0.1>\nCall-ID: trickle\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\n", b.sip.Port(), addrOf(b.phone), addrOf(b.phone)), offer))
	m, src := b.recv(b.pbx)
	body := string(m.(*sip.Request).Body())
	offered := sdpAddr(t, body)
	if offered.Port() == 9 || offered.Addr().IsUnspecified() {
		t.Fatalf("the PBX was told to send to %v:\n%s", offered, body)
	}
	for _, keep := range []string{"a=fingerprint:sha-256 49:66", "a=setup:actpass"} {
		if !strings.Contains(body, keep) {
			t.Errorf("%q lost:\n%s", keep, body)
		}
	}
	if strings.Contains(body, "a=ice-ufrag") {
		t.Errorf("ICE attributes kept (sipcar anchors media):\n%s", body)
	}
	req := m.(*sip.Request)
	b.send(b.pbx, src, withBody(fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: %s\nTo: %s;tag=p\nCall-ID: trickle\nCSeq: 1 INVITE\n"+
		"Contact: <sip:100@%s>\n", req.Via().Value(), req.From().Value(), req.To().Value(), addrOf(b.pbx)),
		sdp("127.0.0.2", int(addrOf(pbxRTP).Port()))))
	ok, _ := b.recv(b.phone)
	answered := sdpAddr(t, string(ok.(*sip.Response).Body()))
	pkt := append([]byte{0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9}, make([]byte, 160)...)
	if _, err := phoneRTP.WriteToUDPAddrPort(pkt, answered); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	_ = pbxRTP.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, from, err := pbxRTP.ReadFromUDPAddrPort(buf); err != nil || from != offered {
		t.Fatalf("the phone's media at the PBX: from %v, %v", from, err)
	}
	// The PBX's media goes back to where the phone's came from.
	if _, err := pbxRTP.WriteToUDPAddrPort(pkt, offered); err != nil {
		t.Fatal(err)
	}
	_ = phoneRTP.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, from, err := phoneRTP.ReadFromUDPAddrPort(buf); err != nil || from != answered {
		t.Fatalf("the PBX's media at the phone: from %v, %v", from, err)
	}

	// Candidates trickled later in an INFO (RFC 8840) reach neither side: ICE is gone from the
	// call, and the PBX's would name its inside address. The rest of the fragment is carried.
	frag := func(host string) string {
		return "a=ice-ufrag:EsAw\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\nm=audio 9 UDP/TLS/RTP/SAVPF 0\na=mid:0\n" +
			"a=candidate:1 1 UDP 2130706431 " + host + " 5000 typ host\na=end-of-candidates\n"
	}
	info := func(sender *net.UDPConn, uri sip.Uri, fromHdr, toHdr, host string, cseq int) {
		dst := netip.AddrPortFrom(netip.MustParseAddr(uri.Host), uint16(uri.Port))
		body := strings.ReplaceAll(frag(host), "\n", "\r\n")
		b.send(sender, dst, fmt.Sprintf("INFO %s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKti%d\nFrom: %s\nTo: %s\n"+
			"Call-ID: trickle\nCSeq: %d INFO\nMax-Forwards: 70\nInfo-Package: trickle-ice\n"+
			"Content-Type: application/trickle-ice-sdpfrag\nContent-Length: %d\n\n", uri.String(), addrOf(sender), cseq, fromHdr, toHdr, cseq, len(body))+frag(host))
	}
	// The PBX to the phone's contact as sipcar gave it.
	info(b.pbx, req.Contact().Address, req.To().Value()+";tag=p", req.From().Value(), "127.0.0.2", 2)
	m, _ = b.recv(b.phone)
	got := m.(*sip.Request)
	// The phone to the PBX's contact as sipcar gave it.
	okContact := ok.(*sip.Response).Contact().Address
	info(b.phone, okContact, "<sip:200@127.0.0.1>;tag=tr", "<sip:100@127.0.0.1>;tag=p", "127.0.0.3", 3)
	m, _ = b.recv(b.pbx)
	for _, r := range []*sip.Request{got, m.(*sip.Request)} {
		body := string(r.Body())
		if r.Method != sip.INFO || !strings.Contains(body, "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n") ||
			strings.Contains(body, "candidate") || strings.Contains(body, "ice-") || strings.Contains(body, "127.0.0.") {
			t.Errorf("%s %s carried the fragment as:\n%s", r.Method, r.Recipient.String(), body)
		}
		if cl := r.ContentLength(); cl == nil || int(*cl) != len(body) {
			t.Errorf("%s: Content-Length %v for a body of %d bytes", r.Method, cl, len(body))
		}
	}
}
