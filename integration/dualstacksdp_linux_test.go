package integration

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDualStackMixedSDP is an offer that mixes the families in one body, per stream (ICE-less
// dual-stack SDP, one c= per m= line, as in RFC 5118 section 4.8): a phone on IPv6 signaling
// offers audio at its IPv4 address and video at its IPv6 address, to an IPv4 PBX (Go peers on
// both ends). The PBX must be offered both streams at sipcar's IPv4 inside address, on ports of
// their own. The phone must be answered per stream, each at sipcar's public address of that
// stream's family (audio 198.51.100.1, video [2001:db8:b::1]): the phone's audio socket is
// IPv4 and can reach no IPv6 address. RTP must then flow both ways on both streams, each
// packet coming from the address the other side was given.
func TestDualStackMixedSDP(t *testing.T) {
	t.Parallel()
	l := newDualStackLab(newTestbed(t))
	pbx := l.udpPeer(l.pbx, netip.AddrPortFrom(plan4.pbx, 5060))
	car := l.startSipcar(l.car, l.sipcarEnv(plan4, "udp")...)
	logCountersOnFailure(t, car)
	phone := l.udpPeer(l.phone, netip.AddrPortFrom(plan6.phone, 5070))
	phoneAudio := l.udpPeer(l.phone, netip.AddrPortFrom(plan4.phone, 7000))
	phoneVideo := l.udpPeer(l.phone, netip.AddrPortFrom(plan6.phone, 7002))
	pbxAudio := l.udpPeer(l.pbx, netip.AddrPortFrom(plan4.pbx, 8000))
	pbxVideo := l.udpPeer(l.pbx, netip.AddrPortFrom(plan4.pbx, 8002))

	sipcar6 := hostPort(plan6.public, 5060)
	phone.send(t, netip.AddrPortFrom(plan6.public, 5060), buildSIP("INVITE sip:pbx@"+sipcar6+" SIP/2.0", []string{
		"Via: SIP/2.0/UDP " + phone.addr.String() + ";branch=z9hG4bKmixedsdp",
		"From: <sip:phone@" + sipcar6 + ">;tag=mixed",
		"To: <sip:pbx@" + sipcar6 + ">",
		"Call-ID: mixed-families",
		"CSeq: 1 INVITE",
		"Contact: <sip:phone@" + phone.addr.String() + ">",
		"Max-Forwards: 70",
		"Content-Type: application/sdp",
	}, fmt.Sprintf("v=0\r\no=- 1 1 IN IP6 %v\r\ns=-\r\nt=0 0\r\n"+
		"m=audio %d RTP/AVP 8\r\nc=IN IP4 %v\r\na=rtpmap:8 PCMA/8000\r\n"+
		"m=video %d RTP/AVP 96\r\nc=IN IP6 %v\r\na=rtpmap:96 H264/90000\r\n",
		plan6.phone, phoneAudio.addr.Port(), plan4.phone, phoneVideo.addr.Port(), plan6.phone)))

	invite := pbx.recv(t, 10*time.Second, "the INVITE at the PBX", isRequest("INVITE"))
	offered := streamAddrs(t, "the offer at the PBX", invite.body)
	for _, m := range []string{"audio", "video"} {
		if a := offered[m]; a.Addr() != plan4.inside {
			t.Errorf("the PBX is offered %s at %v; want sipcar's IPv4 inside address %v", m, a, plan4.inside)
		}
	}
	if offered["audio"] == offered["video"] {
		t.Errorf("the PBX is offered both streams at %v; want a pair each", offered["audio"])
	}
	reply, err := invite.viaAddr()
	if err != nil {
		t.Fatal(err)
	}
	pbx.send(t, reply, response(invite, 200, "OK", "mixedpbx",
		[]string{"Contact: <sip:pbx@" + pbx.addr.String() + ">", "Content-Type: application/sdp"},
		fmt.Sprintf("v=0\r\no=- 2 2 IN IP4 %v\r\ns=-\r\nc=IN IP4 %v\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\nm=video %d RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
			plan4.pbx, plan4.pbx, pbxAudio.addr.Port(), pbxVideo.addr.Port())))
	ok := phone.recv(t, 10*time.Second, "the 200 OK at the phone", isResponse("INVITE", 200))
	t.Logf("the answer at the phone:\n%s", ok.body)
	answered := streamAddrs(t, "the answer at the phone", ok.body)
	if a := answered["audio"]; a.Addr() != plan4.public {
		t.Errorf("the phone's audio (offered at its IPv4 address %v) is answered at %v; want sipcar's IPv4 public address %v",
			phoneAudio.addr, a, plan4.public)
	}
	if a := answered["video"]; a.Addr() != plan6.public {
		t.Errorf("the phone's video (offered at its IPv6 address %v) is answered at %v; want sipcar's IPv6 public address %v",
			phoneVideo.addr, a, plan6.public)
	}

	for _, s := range []struct {
		name              string
		phone, pbx        *udpPeer
		answered, offered netip.AddrPort
	}{
		{"audio", phoneAudio, pbxAudio, answered["audio"], offered["audio"]},
		{"video", phoneVideo, pbxVideo, answered["video"], offered["video"]},
	} {
		if !s.answered.IsValid() || !s.offered.IsValid() {
			continue
		}
		if s.answered.Addr().Is4() != s.phone.addr.Addr().Is4() {
			t.Errorf("%s: the phone's %v cannot send to %v (another family): no media from the phone", s.name, s.phone.addr, s.answered)
		} else if !rtpArrives(t, s.phone, s.answered, s.pbx, s.offered) {
			t.Errorf("%s: RTP from the phone %v to %v did not reach the PBX %v from %v", s.name, s.phone.addr, s.answered, s.pbx.addr, s.offered)
		}
		if !rtpArrives(t, s.pbx, s.offered, s.phone, s.answered) {
			t.Errorf("%s: RTP from the PBX %v to %v did not reach the phone %v from %v", s.name, s.pbx.addr, s.offered, s.phone.addr, s.answered)
		}
	}

	// BYE, and nothing left.
	phone.send(t, netip.AddrPortFrom(plan6.public, 5060), buildSIP("BYE "+ok.contactURI()+" SIP/2.0", []string{
		"Via: SIP/2.0/UDP " + phone.addr.String() + ";branch=z9hG4bKmixedbye",
		"From: <sip:phone@" + sipcar6 + ">;tag=mixed", "To: " + ok.header("To"),
		"Call-ID: mixed-families", "CSeq: 2 BYE", "Max-Forwards: 70",
	}, ""))
	bye := pbx.recv(t, 10*time.Second, "the BYE at the PBX", isRequest("BYE"))
	if back, err := bye.viaAddr(); err == nil {
		pbx.send(t, back, response(bye, 200, "OK", "", nil, ""))
	}
	phone.recv(t, 10*time.Second, "the 200 OK of the BYE at the phone", isResponse("BYE", 200))
	car.waitNoMedia(t, "BYE")
}

var (
	sdpMediaLine = regexp.MustCompile(`^m=(\w+) (\d+) `)
	sdpConnLine  = regexp.MustCompile(`^c=IN IP[46] ([0-9A-Fa-f:.]+)$`)
)

// streamAddrs reads the address of each stream of an SDP body by its media type: its own c=,
// or the session's.
func streamAddrs(t *testing.T, what, body string) map[string]netip.AddrPort {
	t.Helper()
	out := make(map[string]netip.AddrPort)
	var session netip.Addr
	var media string
	var port int
	flush := func(conn netip.Addr) {
		if media != "" {
			out[media] = netip.AddrPortFrom(conn, uint16(port))
		}
	}
	var conn netip.Addr
	for _, l := range strings.Split(body, "\n") {
		l = strings.TrimRight(l, "\r")
		if m := sdpMediaLine.FindStringSubmatch(l); m != nil {
			flush(conn)
			media, conn = m[1], session
			port, _ = strconv.Atoi(m[2])
			continue
		}
		if m := sdpConnLine.FindStringSubmatch(l); m != nil {
			a, err := netip.ParseAddr(m[1])
			if err != nil {
				t.Fatalf("%s: c= line %q: %v", what, l, err)
			}
			if media == "" {
				session = a
			} else {
				conn = a
			}
		}
	}
	flush(conn)
	if len(out) != 2 {
		t.Fatalf("%s: streams %v; want audio and video:\n%s", what, out, body)
	}
	return out
}

// rtpArrives sends RTP from one peer to dst, a packet every 100 ms, until one reaches to from
// want (the address to was given for it), or 10 s pass.
func rtpArrives(t *testing.T, from *udpPeer, dst netip.AddrPort, to *udpPeer, want netip.AddrPort) bool {
	t.Helper()
	ssrc := binary.BigEndian.Uint32(append(from.addr.Addr().AsSlice()[len(from.addr.Addr().AsSlice())-2:], byte(from.addr.Port()>>8), byte(from.addr.Port())))
	deadline := time.Now().Add(10 * time.Second)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		if _, err := from.conn.WriteToUDPAddrPort(rtp(ssrc, seq), dst); err != nil {
			t.Logf("send RTP %v -> %v: %v", from.addr, dst, err)
			return false
		}
		if src, ok := tryRTP(to, ssrc, 100*time.Millisecond); ok {
			if src != want {
				t.Errorf("RTP %v -> %v reached %v from %v; want from %v", from.addr, dst, to.addr, src, want)
			}
			return true
		}
	}
	return false
}
