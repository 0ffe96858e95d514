package integration

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDualStackRegister is registration across the families: a phone registers through a
// dual-stack sipcar with kamailio (testdata/kamailio.cfg) listening in the other family, and a
// caller inside (sipp, next to kamailio, in kamailio's family) calls the phone's AOR through
// kamailio. An IPv6 phone with kamailio on IPv4, over UDP and over TCP, and an IPv4 phone with
// kamailio on IPv6. kamailio knows the phone only by sipcar's inside binding, which must be at
// sipcar's inside address of kamailio's family and live as long as the registration; the call
// reaching the phone proves that the binding works. Media flows both ways between the caller
// and the phone (counted on both of sipcar's links); every address in an address field of a
// message the phone receives is an outside one of its family, and of one kamailio or the
// caller receives an inside one of theirs.
func TestDualStackRegister(t *testing.T) {
	for _, c := range []struct {
		name       string
		phone, pbx addrPlan
		transport  string // the phone's; kamailio is on UDP
	}{
		{"v6-phone-v4-kamailio-udp", plan6, plan4, "udp"},
		{"v6-phone-v4-kamailio-tcp", plan6, plan4, "tcp"},
		{"v4-phone-v6-kamailio-udp", plan4, plan6, "udp"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			testDualStackRegister(t, c.phone, c.pbx, c.transport)
		})
	}
}

func testDualStackRegister(t *testing.T, ph, px addrPlan, transport string) {
	l := newDualStackLab(newTestbed(t))
	tcp := transport == "tcp"
	public := l.capture(l.car, "out0", netip.AddrPortFrom(ph.phone, 9))
	inside := l.capture(l.car, "in0", netip.AddrPortFrom(px.pbx, 9))
	l.startKamailioAt(l.pbx, px.pbx)
	car := l.startSipcar(l.car, l.sipcarEnv(px, "udp")...)
	logCountersOnFailure(t, car)

	reg := l.sipp(l.phone, "register", sippOpts{scenario: "register_dual.xml", local: ph.phone.String(),
		remote: hostPort(ph.public, 5060), tcp: tcp, service: "alice"})
	reg.succeeded(t, 20*time.Second, 1)

	phoneSIP := netip.AddrPortFrom(ph.phone, 5060)
	m := car.mustServerMap(t)
	var binding *entry
	for _, e := range m.of("sip") {
		if e.ForwardTo == phoneSIP {
			binding = &e
		}
	}
	switch {
	case binding == nil:
		t.Fatalf("no sip binding for the registered %s phone %v:\n%v", familyName(ph), phoneSIP, m)
	case binding.Faces != "inside" || binding.Address.Addr() != px.inside:
		t.Errorf("the phone's binding %v: want it at sipcar's inside address of kamailio's family, %v", binding, px.inside)
	case binding.LeftSeconds == nil || *binding.LeftSeconds <= 120:
		t.Errorf("the registered phone's binding %v: want it to live as long as the registration (300 s)", binding)
	}

	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uas_media.xml", local: ph.phone.String(), tcp: tcp, echo: true})
	l.waitListening(l.phone, transport, 5060)
	caller := l.sipp(l.pbx, "caller", sippOpts{scenario: "uac_media.xml", local: px.pbx.String(), port: 5070,
		media: 6100, remote: hostPort(px.pbx, 5060), service: "alice", pauseMS: 3000, rtpPcap: true})

	phoneMedia, callerMedia := netip.AddrPortFrom(ph.phone, 6000), netip.AddrPortFrom(px.pbx, 6100)
	car.waitMap(t, 20*time.Second, "media both ways through both sip-rtp bindings, each at sipcar's address of its peer's family", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 2 {
			return false
		}
		for _, e := range rtp {
			want := map[string][2]netip.AddrPort{
				"outside": {netip.AddrPortFrom(ph.public, 0), callerMedia}, // the phone's view of the caller
				"inside":  {netip.AddrPortFrom(px.inside, 0), phoneMedia},
			}[e.Faces]
			if e.PacketsSent == 0 || e.PacketsReceived == 0 || e.Address.Addr() != want[0].Addr() || e.ForwardTo != want[1] {
				return false
			}
		}
		return true
	})
	caller.succeeded(t, 30*time.Second, 1)
	phone.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")

	checkPeerLink(t, peerLink{where: "the phone's link", pkts: public.stop(t), peer: ph.phone, side: ph.publicNet,
		media: phoneMedia, sipcar: ph.public, starts: []string{"SIP/2.0 200 ", "INVITE ", "ACK ", "BYE "}})
	checkPeerLink(t, peerLink{where: "kamailio's link", pkts: inside.stop(t), peer: px.pbx, side: px.insideNet,
		media: callerMedia, sipcar: px.inside, starts: []string{"REGISTER ", "SIP/2.0 180 ", "SIP/2.0 200 "}})
}

// TestDualStackTLSPhone is TLS in each pairing of families, with a registration: a Go phone
// (Debian's sipp has no TLS) registers through sipcar's TLS listener (SIPCAR_LISTEN_TLS=:5061,
// and its IPv6 twin) with kamailio over UDP; the REGISTER kamailio gets has the phone's Contact
// at sipcar's inside binding of kamailio's family. A caller next to kamailio (sipp) calls the
// phone's AOR through kamailio: the INVITE reaches the phone over its own TLS connection with
// Contact and top Record-Route at sipcar's public address of the phone's family on TLS and
// media offered there; the phone answers and echoes the caller's RTP, which flows both ways
// (counted at the phone and on both of sipcar's links); the caller's BYE ends the call and no
// media binding is left. Every address in an address field of what the phone received over TLS
// is an outside one of its family.
func TestDualStackTLSPhone(t *testing.T) {
	t.Parallel()
	for _, pair := range []struct {
		name   string
		ph, px addrPlan
	}{{"v6-phone-v4-pbx", plan6, plan4}, {"v4-phone-v6-pbx", plan4, plan6}, {"v6-v6", plan6, plan6}, {"v4-v4", plan4, plan4}} {
		t.Run(pair.name, func(t *testing.T) {
			t.Parallel()
			dualStackTLSPhone(t, pair.ph, pair.px)
		})
	}
}

func dualStackTLSPhone(t *testing.T, ph, px addrPlan) {
	l := newDualStackLab(newTestbed(t))
	certFile, keyFile, roots := writeCertificate(t, l.workdir("tls"), ph.public)
	public := l.capture(l.car, "out0", netip.AddrPortFrom(ph.phone, 9))
	inside := l.capture(l.car, "in0", netip.AddrPortFrom(px.pbx, 9))
	l.startKamailioAt(l.pbx, px.pbx)
	car := l.startSipcar(l.car, l.sipcarEnv(px, "udp",
		"SIPCAR_LISTEN_TLS=:5061", "SIPCAR_TLS_CERT="+certFile, "SIPCAR_TLS_KEY="+keyFile)...)
	logCountersOnFailure(t, car)

	tc, err := dialTLS(l.phone, netip.AddrPortFrom(ph.public, 5061), roots)
	if err != nil {
		t.Fatalf("TLS to sipcar's public address %v: %v", ph.public, err)
	}
	phone := newStreamPeer(t, tc)
	local := netip.MustParseAddrPort(tc.LocalAddr().String())
	media := l.udpPeer(l.phone, netip.AddrPortFrom(ph.phone, 7000))
	sipcarURI := hostPort(ph.public, 5061)
	contact := fmt.Sprintf("Contact: <sip:alice@%v;transport=tls>", local)
	var received []wireMsg // what reached the phone over TLS

	phone.send(t, buildSIP("REGISTER sip:"+sipcarURI+";transport=tls SIP/2.0", []string{
		fmt.Sprintf("Via: SIP/2.0/TLS %v;branch=z9hG4bKtls6reg1", local),
		"From: <sip:alice@" + sipcarURI + ">;tag=tls6reg", "To: <sip:alice@" + sipcarURI + ">",
		"Call-ID: tls6-register", "CSeq: 1 REGISTER", contact, "Expires: 300", "Max-Forwards: 70",
	}, ""))
	reg := phone.recv(t, 10*time.Second, "the answer to the REGISTER over TLS", isResponse("REGISTER", 0))
	received = append(received, wireMsg{raw: reg.raw})
	if reg.status() != 200 {
		t.Fatalf("REGISTER over TLS answered %q; want 200", reg.start)
	}
	if got := reg.contactURI(); !strings.Contains(got, local.String()) {
		t.Errorf("the 200 to the REGISTER lists Contact %q; want the phone's own %v", got, local)
	}
	var binding *entry
	m := car.mustServerMap(t)
	for _, e := range m.of("sip") {
		if e.ForwardTo == local {
			binding = &e
		}
	}
	if binding == nil || binding.Faces != "inside" || binding.Address.Addr() != px.inside {
		t.Fatalf("no sip binding at sipcar's inside address %v for the TLS phone %v:\n%v", px.inside, local, m)
	}

	caller := l.sipp(l.pbx, "caller", sippOpts{scenario: "uac_media.xml", local: px.pbx.String(), port: 5070,
		media: 6100, remote: hostPort(px.pbx, 5060), service: "alice", pauseMS: 3000, rtpPcap: true})
	callerMedia := netip.AddrPortFrom(px.pbx, 6100)

	invite := phone.recv(t, 15*time.Second, "the INVITE over the phone's own TLS connection", isRequest("INVITE"))
	received = append(received, wireMsg{raw: invite.raw})
	keepsTLS := func(what, uri string) {
		t.Helper()
		if !strings.HasPrefix(uri, "sips:") && !strings.Contains(strings.ToLower(uri), "transport=tls") {
			t.Errorf("%s URI %q does not keep the phone on TLS (want sips: or ;transport=tls in the URI)", what, uri)
		}
		if dst, err := uriAddrAny(uri); err != nil || dst.Addr() != ph.public {
			t.Errorf("%s %q is not at sipcar's public address %v (%v)", what, uri, ph.public, err)
		}
	}
	keepsTLS("the INVITE's Contact", invite.contactURI())
	if routes := routeURIs(invite.headers("Record-Route")); len(routes) == 0 {
		t.Errorf("the INVITE at the phone has no Record-Route; kamailio record-routes")
	} else {
		keepsTLS("the INVITE's top Record-Route", routes[0])
	}
	offered, err := sdpMedia(invite.body)
	if err != nil {
		t.Fatal(err)
	}
	if offered.Addr() != ph.public {
		t.Errorf("the INVITE offers media at %v; want sipcar's public address %v", offered, ph.public)
	}

	extra := []string{contact, "Content-Type: application/sdp"}
	for _, rr := range invite.headers("Record-Route") {
		extra = append(extra, "Record-Route: "+rr)
	}
	echo := echoRTP(media, offered)
	phone.send(t, response(invite, 200, "OK", "tls6phone", extra, sdpOffer(media.addr)))
	ack := phone.recv(t, 10*time.Second, "the ACK over TLS", isRequest("ACK"))
	received = append(received, wireMsg{raw: ack.raw})
	car.waitMap(t, 20*time.Second, "media both ways through both sip-rtp bindings", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		return len(rtp) == 2 && rtp[0].PacketsSent > 0 && rtp[0].PacketsReceived > 0 &&
			rtp[1].PacketsSent > 0 && rtp[1].PacketsReceived > 0
	})
	bye := phone.recv(t, 20*time.Second, "the caller's BYE over TLS", isRequest("BYE"))
	received = append(received, wireMsg{raw: bye.raw})
	phone.send(t, response(bye, 200, "OK", "", nil, ""))
	echoed, stray, err := echo()
	if err != nil {
		t.Errorf("the phone's media socket: %v", err)
	}
	caller.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")

	checkAddressesIn(t, "the TLS phone", received, ph.publicNet)
	if echoed < 50 || stray != 0 {
		t.Errorf("the phone echoed %d RTP packets from %v (%d from elsewhere); want at least 50, none from elsewhere", echoed, offered, stray)
	}
	// Over TLS the capture shows no SIP, but the addresses and the media.
	checkPeerLink(t, peerLink{where: "the phone's link", pkts: public.stop(t), peer: ph.phone, side: ph.publicNet,
		media: media.addr, sipcar: ph.public})
	in := inside.stop(t)
	checkPeerLink(t, peerLink{where: "kamailio's link", pkts: in, peer: px.pbx, side: px.insideNet,
		media: callerMedia, sipcar: px.inside, starts: []string{"REGISTER ", "SIP/2.0 200 "}})
	for _, w := range wireMessages(in) {
		if !strings.HasPrefix(string(w.raw), "REGISTER ") {
			continue
		}
		msg, err := parseSIP(w.raw)
		if err != nil {
			t.Fatal(err)
		}
		if dst, err := uriAddrAny(msg.contactURI()); err != nil || dst != binding.Address || w.proto != "udp" {
			t.Errorf("the REGISTER at kamailio (over %s) has Contact %q; want sipcar's inside binding for the phone, %v, over UDP", w.proto, msg.contactURI(), binding.Address)
		}
	}
}

var uriHost = regexp.MustCompile(`sips?:(?:[^@>;]*@)?(\[[0-9A-Fa-f:.]+\]|[0-9.]+)(?::(\d+))?`)

// uriAddrAny returns the IP address and port a SIP URI names, IPv4 or IPv6 (port 5060 when it
// names none).
func uriAddrAny(uri string) (netip.AddrPort, error) {
	m := uriHost.FindStringSubmatch(uri)
	if m == nil {
		return netip.AddrPort{}, fmt.Errorf("no IP host in URI %q", uri)
	}
	a, err := netip.ParseAddr(strings.Trim(m[1], "[]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("URI %q: %w", uri, err)
	}
	port := uint16(5060)
	if m[2] != "" {
		var p int
		fmt.Sscan(m[2], &p)
		port = uint16(p)
	}
	return netip.AddrPortFrom(a, port), nil
}

var sdpConnAny = regexp.MustCompile(`(?m)^c=IN IP[46] ([0-9A-Fa-f:.]+)\r?$`)

// sdpMedia returns the address and port of the first audio stream of an SDP body, IPv4 or
// IPv6.
func sdpMedia(body string) (netip.AddrPort, error) {
	c, a := sdpConnAny.FindStringSubmatch(body), sdpAudio.FindStringSubmatch(body)
	if c == nil || a == nil {
		return netip.AddrPort{}, fmt.Errorf("no c= or m=audio in the SDP:\n%s", body)
	}
	addr, err := netip.ParseAddr(c[1])
	if err != nil {
		return netip.AddrPort{}, err
	}
	var port int
	fmt.Sscan(a[1], &port)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// sdpOffer is [offer] in the address's own family: an SDP offer or answer for one PCMA audio
// stream at addr.
func sdpOffer(addr netip.AddrPort) string {
	ip := "IP4"
	if addr.Addr().Is6() {
		ip = "IP6"
	}
	return fmt.Sprintf("v=0\r\no=- 1 1 IN %s %s\r\ns=-\r\nc=IN %s %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
		ip, addr.Addr(), ip, addr.Addr(), addr.Port())
}
