package integration

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Sidecar mode with a registrar inside (kamailio) and phones outside that register through
// sipcar: phone to phone through the PBX, and a call from the PBX side to a phone on TLS.

// bobAddr is the second phone outside, on the same segment as the first (phoneAddr).
var bobAddr = netip.MustParseAddr("198.51.100.30")

// twoPhoneLab is the sidecar topology with two phones outside on one Ethernet segment (a
// bridge in a switch namespace), so that media between them crosses wires of their own and
// a capture on sipcar's public interface shows whether it went through sipcar:
//
//	alice 198.51.100.20 (alice0) ==+
//	bob   198.51.100.30 (bob0)   ==+= br0 (sw) == out0 198.51.100.1  car  in0 198.18.0.1 == eth0 198.18.0.10 pbx
//
// The embedded upstreamLab's phone is alice.
type twoPhoneLab struct {
	*upstreamLab
	bob, sw *netns
}

func newTwoPhoneLab(tb *testbed) *twoPhoneLab {
	tb.t.Helper()
	p := plan4
	alice, bob, sw, car, pbx := tb.host("alice"), tb.host("bob"), tb.host("sw"), tb.host("car"), tb.host("pbx")
	if err := ipCmd("-n", sw.name, "link", "add", "br0", "type", "bridge"); err != nil {
		tb.t.Fatal(err)
	}
	tb.link(end{car, "out0", []string{p.cidr(p.public)}}, end{sw, "p0", nil})
	tb.link(end{alice, "alice0", []string{p.cidr(p.phone)}}, end{sw, "p1", nil})
	tb.link(end{bob, "bob0", []string{p.cidr(bobAddr)}}, end{sw, "p2", nil})
	for _, port := range []string{"p0", "p1", "p2"} {
		if err := ipCmd("-n", sw.name, "link", "set", port, "master", "br0"); err != nil {
			tb.t.Fatal(err)
		}
	}
	if err := ipCmd("-n", sw.name, "link", "set", "br0", "up"); err != nil {
		tb.t.Fatal(err)
	}
	tb.link(end{car, "in0", []string{p.cidr(p.inside)}}, end{pbx, "eth0", []string{p.cidr(p.pbx)}})
	return &twoPhoneLab{upstreamLab: &upstreamLab{testbed: tb, phone: alice, car: car, pbx: pbx, plan: p}, bob: bob, sw: sw}
}

// TestSidecarPhoneToPhone: two phones outside (sipp) register through sipcar with kamailio
// inside as alice and bob, over UDP or TCP (sipcar reaches kamailio over UDP either way), and
// alice calls bob by his AOR: the INVITE goes alice -> sipcar -> kamailio -> sipcar -> bob, one
// Call-ID crossing sipcar twice. Media stays anchored (the phones may not reach each other, each
// behind its NAT): each crossing has pairs of its own, so each phone is offered media at sipcar's
// public address, and the media goes phone -> sipcar -> sipcar -> other phone. The test counts
// it at each phone and on sipcar's public interface and finds none directly between the phones.
// The call ends with BYE and leaves no media binding; the public side names no inside address.
func TestSidecarPhoneToPhone(t *testing.T) {
	for _, tc := range []struct{ name, transport, media string }{
		{"udp", "udp", "fallback"},
		{"tcp", "tcp", "fallback"},
		// The media crosses sipcar twice: in fan-in mode sipcar's packets to itself go out on
		// the raw socket and come back in through its TPROXY rule.
		{"udp-fanin", "udp", "fanin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testSidecarPhoneToPhone(t, tc.transport, tc.media)
		})
	}
}

func testSidecarPhoneToPhone(t *testing.T, transport, mediaMode string) {
	l := newTwoPhoneLab(newTestbed(t))
	tcp := transport == "tcp"
	aliceMedia, bobMedia := netip.AddrPortFrom(phoneAddr, 6000), netip.AddrPortFrom(bobAddr, 6000)
	public := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	inside := l.capture(l.car, "in0", netip.AddrPortFrom(pbxAddr, 9))
	atAlice := l.capture(l.phone, "alice0", netip.AddrPortFrom(bobAddr, 9))
	atBob := l.capture(l.bob, "bob0", netip.AddrPortFrom(phoneAddr, 9))
	l.startKamailio(l.pbx)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", "SIPCAR_MEDIA_MODE="+mediaMode)...) // LISTEN_UDP and LISTEN_TCP: :5060
	logCountersOnFailure(t, car)

	phones := []struct {
		ns   *netns
		user string
		addr netip.Addr
	}{{l.phone, "alice", phoneAddr}, {l.bob, "bob", bobAddr}}
	for _, ph := range phones {
		l.registerThroughSipcar(ph.ns, ph.addr, ph.user, tcp)
	}
	m := car.mustServerMap(t)
	for _, ph := range phones {
		contact := netip.AddrPortFrom(ph.addr, 5060)
		var binding *entry
		for _, e := range m.of("sip") {
			if e.ForwardTo == contact {
				binding = &e
			}
		}
		switch {
		case binding == nil:
			t.Errorf("no sip binding for %s's registered Contact %v:\n%v", ph.user, contact, m)
		case binding.Faces != "inside" || !insideNet.Contains(binding.Address.Addr()):
			t.Errorf("%s's binding %v does not face the inside", ph.user, binding)
		case binding.LeftSeconds == nil || *binding.LeftSeconds <= 120:
			t.Errorf("%s's binding %v: want it to live as long as the registration (300 s)", ph.user, binding)
		}
	}

	bob := l.sipp(l.bob, "bob", sippOpts{scenario: "uas_media.xml", local: bobAddr.String(), tcp: tcp, echo: true})
	l.waitListening(l.bob, transport, 5060)
	alice := l.sipp(l.phone, "alice", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: hostPort(publicAddr, 5060), tcp: tcp, service: "bob", pauseMS: 3000, rtpPcap: true})

	// While the call lasts, sipcar holds pairs for both crossings, which carry the media. Every
	// media binding seen until the BYE released them is kept, with the most packets it showed.
	seen := make(map[netip.AddrPort]entry)
	record := func(m serverMap) {
		for _, e := range m.media() {
			if old, ok := seen[e.Address]; !ok || e.PacketsSent+e.PacketsReceived > old.PacketsSent+old.PacketsReceived {
				seen[e.Address] = e
			}
		}
	}
	eventually(t, 30*time.Second, "the call's media pairs allocated", func() (bool, string) {
		m, err := car.serverMap()
		if err != nil {
			return false, err.Error()
		}
		record(m)
		return len(m.of("sip-rtp")) > 0, m.String()
	})
	eventually(t, 30*time.Second, "the call's media pairs released by the BYE", func() (bool, string) {
		m, err := car.serverMap()
		if err != nil {
			return false, err.Error()
		}
		record(m)
		return len(m.media()) == 0, m.String()
	})
	alice.succeeded(t, 30*time.Second, 1)
	bob.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	var lines []string
	toPhones := map[netip.AddrPort]uint64{}
	for _, e := range seen {
		lines = append(lines, e.String())
		if e.ForwardTo.IsValid() && e.ForwardTo.Addr() == publicAddr {
			t.Errorf("media binding %v stands for sipcar's own public address: a loop", e)
		}
		if e.Type == "sip-rtp" && (e.ForwardTo == aliceMedia || e.ForwardTo == bobMedia) {
			toPhones[e.ForwardTo] += e.PacketsSent
		}
	}
	// The two crossings: what a phone's pair on one sent to its phone arrived through the other.
	if toPhones[aliceMedia] < 50 || toPhones[bobMedia] < 50 {
		t.Errorf("sipcar's bindings sent %d RTP packets to alice and %d to bob; want at least 50 each", toPhones[aliceMedia], toPhones[bobMedia])
	}
	slices.Sort(lines)
	t.Logf("media bindings during the call:\n  %s\nbindings released: %s", strings.Join(lines, "\n  "),
		counters(car, "sipcar_pinhole_expirations_total"))

	// The phones were given media at sipcar's public address, and used it: RTP between each phone
	// and sipcar, none directly between the phones.
	pub := public.stop(t)
	wire := wireMessages(pub)
	sdpTo := func(dst netip.Addr, match func(wireMsg) bool) {
		t.Helper()
		n := 0
		for _, w := range wire {
			if w.dst.Addr() != dst || !match(w) {
				continue
			}
			n++
			msg, err := parseSIP(w.raw)
			if err != nil {
				t.Error(err)
				continue
			}
			if w.proto != transport {
				t.Errorf("%q reached %v over %s; want %s", msg.start, w.dst, w.proto, transport)
			}
			if got, err := msg.media(); err != nil || got.Addr() != publicAddr {
				t.Errorf("%q to %v offers media at %v (%v); want sipcar's public address", msg.start, dst, got, err)
			}
		}
		if n == 0 {
			t.Errorf("no message with SDP to %v on sipcar's public interface", dst)
		}
	}
	sdpTo(bobAddr, func(w wireMsg) bool { return strings.HasPrefix(string(w.raw), "INVITE ") })
	sdpTo(phoneAddr, func(w wireMsg) bool { return w.status() == 200 && w.cseqMethod() == "INVITE" })
	for _, s := range []string{"REGISTER ", "INVITE ", "ACK ", "BYE ", "SIP/2.0 200 "} {
		if countWireStarts(wire, s) == 0 {
			t.Errorf("no %q message on sipcar's public side (%d SIP messages)", s, len(wire))
		}
	}
	checkNoInsideAddress(t, "sipcar's public interface", wire)
	relayed := 0
	for _, p := range pub {
		if insideNet.Contains(p.src.Addr()) || insideNet.Contains(p.dst.Addr()) {
			t.Errorf("a packet with an inside address on the public side: %v -> %v %s", p.src, p.dst, p.proto)
		}
		if p.proto == "udp" && isRTP(p.payload) && (p.src.Addr() == publicAddr || p.dst.Addr() == publicAddr) {
			relayed++
		}
	}
	bobWire, aliceWire := atBob.stop(t), atAlice.stop(t)
	direct := rtpBetween(bobWire, aliceMedia, bobMedia) + rtpBetween(aliceWire, bobMedia, aliceMedia)
	fromSipcar := func(pkts []packet, dst netip.AddrPort) int {
		n := 0
		for _, p := range pkts {
			if p.proto == "udp" && isRTP(p.payload) && p.src.Addr() == publicAddr && p.dst == dst {
				n++
			}
		}
		return n
	}
	toBob, toAlice := fromSipcar(bobWire, bobMedia), fromSipcar(aliceWire, aliceMedia)
	t.Logf("RTP: %d packets sipcar -> bob at bob's wire, %d sipcar -> alice at alice's wire, %d to or from sipcar on its public interface, %d directly between the phones",
		toBob, toAlice, relayed, direct)
	// alice plays 100 packets; bob echoes them.
	if toBob < 50 || toAlice < 50 {
		t.Errorf("RTP through sipcar: %d to bob, %d to alice; want at least 50 each way", toBob, toAlice)
	}
	if direct != 0 {
		t.Errorf("%d RTP packets directly between the phones; want the media anchored at sipcar", direct)
	}

	// sipcar reached kamailio over UDP only, whatever the phones used.
	for _, w := range wireMessages(inside.stop(t)) {
		if w.proto != "udp" {
			t.Errorf("a SIP message over %s between sipcar and kamailio (%v -> %v); the upstream is UDP:\n%s", w.proto, w.src, w.dst, w.raw)
		}
	}
}

// TestSidecarTLSPhone is transport conversion with a registrar: a phone on TLS (a Go client,
// since sipp has no TLS) registers through sipcar's TLS listener with kamailio, which sipcar
// reaches over UDP; the registrar gets a Contact at sipcar's inside binding over UDP. A caller
// inside (sipp) calls the phone's AOR through kamailio, and the INVITE reaches the phone over
// its own TLS connection, with a Contact and Record-Route that keep it on TLS at sipcar's
// public address. The phone answers and echoes the caller's RTP; media flows both ways
// through sipcar, BYE ends the call, and no media binding is left. Nothing the phone receives
// names an inside address.
func TestSidecarTLSPhone(t *testing.T) {
	t.Parallel()
	l := newUpstreamLab(newTestbed(t))
	certFile, keyFile, roots := writeCertificate(t, l.workdir("tls"), publicAddr)
	public := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	inside := l.capture(l.car, "in0", netip.AddrPortFrom(pbxAddr, 9))
	l.startKamailio(l.pbx)
	car := l.startSipcar(l.car, l.sipcarEnv("udp",
		"SIPCAR_LISTEN_TLS=:5061", "SIPCAR_TLS_CERT="+certFile, "SIPCAR_TLS_KEY="+keyFile)...)
	logCountersOnFailure(t, car)

	phone, local := dialTLSPhone(t, l, roots)
	media := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 7000))
	contact := fmt.Sprintf("Contact: <sip:alice@%v;transport=tls>", local)
	var received [][]byte // what reached the phone over TLS

	phone.send(t, buildSIP("REGISTER sip:198.51.100.1:5061;transport=tls SIP/2.0", []string{
		fmt.Sprintf("Via: SIP/2.0/TLS %v;branch=z9hG4bKtlsreg1", local),
		"From: <sip:alice@198.51.100.1>;tag=tlsreg", "To: <sip:alice@198.51.100.1>",
		"Call-ID: tls-register", "CSeq: 1 REGISTER", contact, "Expires: 300", "Max-Forwards: 70",
	}, ""))
	reg := phone.recv(t, 10*time.Second, "the answer to the REGISTER over TLS", isResponse("REGISTER", 0))
	received = append(received, reg.raw)
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
	if binding == nil || binding.Faces != "inside" || !insideNet.Contains(binding.Address.Addr()) {
		t.Fatalf("no sip binding facing the inside for the TLS phone %v:\n%v", local, m)
	}
	t.Logf("the TLS phone's binding: %v", binding)

	caller := l.sipp(l.pbx, "caller", sippOpts{scenario: "uac_media.xml", local: pbxAddr.String(), port: 5070,
		media: 6100, remote: hostPort(pbxAddr, 5060), service: "alice", pauseMS: 3000, rtpPcap: true})
	callerMedia := netip.AddrPortFrom(pbxAddr, 6100)

	invite := phone.recv(t, 15*time.Second, "the INVITE over the phone's own TLS connection", isRequest("INVITE"))
	received = append(received, invite.raw)
	t.Logf("INVITE at the TLS phone: Contact %s; Record-Route %q", invite.header("Contact"), invite.headers("Record-Route"))
	keepsTLS := func(what, uri string) {
		t.Helper()
		if !strings.HasPrefix(uri, "sips:") && !strings.Contains(strings.ToLower(uri), "transport=tls") {
			t.Errorf("%s URI %q does not keep the phone on TLS (want sips: or ;transport=tls in the URI)", what, uri)
		}
		if dst, err := uriAddr(uri); err != nil || dst.Addr() != publicAddr {
			t.Errorf("%s %q is not at sipcar's public address", what, uri)
		}
	}
	// Read strictly: in a Contact without angle brackets, what follows the URI's host and port
	// after a ';' are header parameters, not the URI's (RFC 3261 section 20.10).
	keepsTLS(fmt.Sprintf("the INVITE's Contact (header %q)", invite.header("Contact")), invite.contactURI())
	routes := routeURIs(invite.headers("Record-Route"))
	if len(routes) == 0 {
		t.Errorf("the INVITE at the phone has no Record-Route; kamailio record-routes")
	} else {
		// The phone's route set is the Record-Route in order: its first hop is the top one.
		keepsTLS("the INVITE's top Record-Route", routes[0])
	}
	offered, err := invite.media()
	if err != nil {
		t.Fatal(err)
	}
	if offered.Addr() != publicAddr {
		t.Errorf("the INVITE offers media at %v; want sipcar's public address", offered)
	}

	extra := []string{contact, "Content-Type: application/sdp"}
	for _, rr := range invite.headers("Record-Route") {
		extra = append(extra, "Record-Route: "+rr)
	}
	echo := echoRTP(media, offered)
	phone.send(t, response(invite, 200, "OK", "tlsphone", extra, offer(media.addr)))
	ack := phone.recv(t, 10*time.Second, "the ACK over TLS", isRequest("ACK"))
	received = append(received, ack.raw)

	car.waitMap(t, 15*time.Second, "media both ways through both sip-rtp bindings", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		return len(rtp) == 2 && rtp[0].PacketsSent > 0 && rtp[0].PacketsReceived > 0 &&
			rtp[1].PacketsSent > 0 && rtp[1].PacketsReceived > 0
	})
	bye := phone.recv(t, 20*time.Second, "the caller's BYE over TLS", isRequest("BYE"))
	received = append(received, bye.raw)
	phone.send(t, response(bye, 200, "OK", "", nil, ""))
	echoed, stray, err := echo()
	if err != nil {
		t.Errorf("the phone's media socket: %v", err)
	}
	caller.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")

	checkNoInsideAddress(t, "the TLS phone", wireOf(received))
	// Over TLS the capture shows no SIP, but the addresses and the media.
	pub := public.stop(t)
	fromPhone, toPhone := rtpBetween(pub, media.addr, offered), rtpBetween(pub, offered, media.addr)
	for _, p := range pub {
		if insideNet.Contains(p.src.Addr()) || insideNet.Contains(p.dst.Addr()) {
			t.Errorf("a packet with an inside address on the public side: %v -> %v %s", p.src, p.dst, p.proto)
		}
	}
	in := inside.stop(t)
	var toCaller, fromCaller int
	var regContact string
	for _, p := range in {
		if p.proto == "udp" && isRTP(p.payload) {
			switch {
			case p.dst == callerMedia:
				toCaller++
			case p.src == callerMedia:
				fromCaller++
			}
		}
	}
	t.Logf("RTP: the phone got %d from %v and echoed them (%d from elsewhere); public side %d phone -> sipcar, %d sipcar -> phone; inside %d caller -> sipcar, %d sipcar -> caller",
		echoed, offered, stray, fromPhone, toPhone, fromCaller, toCaller)
	// The caller plays 100 packets, the phone echoes them.
	if echoed < 50 || fromPhone < 50 || toPhone < 50 || fromCaller < 50 || toCaller < 50 {
		t.Errorf("RTP through sipcar: want at least 50 packets each way on each side")
	}
	if stray != 0 {
		t.Errorf("%d RTP packets reached the phone from elsewhere than the %v its INVITE offered", stray, offered)
	}

	// The REGISTER kamailio got: over UDP, with the phone's Contact at sipcar's inside binding,
	// which kamailio reaches over UDP.
	regs := 0
	for _, w := range wireMessages(in) {
		if w.proto != "udp" {
			t.Errorf("a SIP message over %s between sipcar and kamailio (%v -> %v); the upstream is UDP", w.proto, w.src, w.dst)
		}
		if !strings.HasPrefix(string(w.raw), "REGISTER ") {
			continue
		}
		regs++
		msg, err := parseSIP(w.raw)
		if err != nil {
			t.Fatal(err)
		}
		regContact = msg.contactURI()
		if dst, err := uriAddr(regContact); err != nil || dst != binding.Address {
			t.Errorf("the REGISTER at kamailio has Contact %q; want sipcar's inside binding for the phone, %v", regContact, binding.Address)
		}
		if l := strings.ToLower(regContact); strings.HasPrefix(l, "sips:") || (strings.Contains(l, "transport=") && !strings.Contains(l, "transport=udp")) {
			t.Errorf("the REGISTER at kamailio has Contact %q; want it reached over UDP", regContact)
		}
		if v := msg.header("Via"); !strings.HasPrefix(strings.ToUpper(v), "SIP/2.0/UDP ") {
			t.Errorf("the REGISTER at kamailio has top Via %q; want UDP", v)
		}
	}
	if regs == 0 {
		t.Errorf("no REGISTER between sipcar and kamailio")
	}
	t.Logf("the REGISTER at kamailio: Contact %s", regContact)
}

// rtpBetween counts the RTP packets of a capture from src to dst.
func rtpBetween(pkts []packet, src, dst netip.AddrPort) int {
	n := 0
	for _, p := range pkts {
		if p.proto == "udp" && p.src == src && p.dst == dst && isRTP(p.payload) {
			n++
		}
	}
	return n
}

// countWireStarts counts the messages whose start line begins with prefix ("INVITE ",
// "SIP/2.0 200 ").
func countWireStarts(msgs []wireMsg, prefix string) int {
	n := 0
	for _, w := range msgs {
		if strings.HasPrefix(string(w.raw), prefix) {
			n++
		}
	}
	return n
}

// wireOf wraps messages received by a peer for [checkNoInsideAddress].
func wireOf(raw [][]byte) []wireMsg {
	ws := make([]wireMsg, len(raw))
	for i, r := range raw {
		ws[i] = wireMsg{raw: r}
	}
	return ws
}

// checkNoInsideAddress fails the test for every field of msgs that gives an address to be
// reached at (Request-URI, Via, Contact, Record-Route, Route, Path, SDP c=, o=, a=rtcp) and
// names an inside address.
func checkNoInsideAddress(t *testing.T, where string, msgs []wireMsg) {
	t.Helper()
	for _, w := range msgs {
		for _, f := range leakedFields(w.raw, plan4.insideText) {
			if isAddressField(f) {
				t.Errorf("an inside address in the %s of a message at %s:\n%s", f, where, w.raw)
			}
		}
	}
}

var routeURI = regexp.MustCompile(`<([^>]+)>`)

// routeURIs returns the URIs of Record-Route or Route header values, in order.
func routeURIs(values []string) []string {
	var uris []string
	for _, v := range values {
		for _, m := range routeURI.FindAllStringSubmatch(v, -1) {
			uris = append(uris, m[1])
		}
	}
	return uris
}

// echoRTP sends every RTP packet that reaches peer from src back to src, as a phone playing
// back what it hears would, until the returned function is called; that returns how many it
// echoed, how many RTP packets came from elsewhere, and the socket's error if it failed before.
func echoRTP(peer *udpPeer, src netip.AddrPort) func() (echoed, stray int, err error) {
	type counts struct {
		echoed, stray int
		err           error
	}
	done := make(chan counts, 1)
	go func() {
		var c counts
		buf := make([]byte, 2048)
		for {
			n, from, err := peer.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
					c.err = err
				}
				done <- c
				return
			}
			if !isRTP(buf[:n]) {
				continue
			}
			if from != src {
				c.stray++
				continue
			}
			if _, err := peer.conn.WriteToUDPAddrPort(buf[:n], src); err == nil {
				c.echoed++
			}
		}
	}()
	return func() (int, int, error) {
		_ = peer.conn.SetReadDeadline(time.Now())
		c := <-done
		return c.echoed, c.stray, c.err
	}
}

// logCountersOnFailure logs, when the test fails, sipcar's counters of SIP messages it did not
// forward and of bindings it released, by reason: where a call went wrong. It runs before
// sipcar is stopped (cleanups run last first).
func logCountersOnFailure(t *testing.T, car *sipcarProc) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sipcar's counters: messages dropped: %s; bindings released: %s",
				counters(car, "sipcar_sip_messages_dropped_total"), counters(car, "sipcar_pinhole_expirations_total"))
		}
	})
}

// counters returns the non-zero series of a metric of sipcar's, as printed.
func counters(car *sipcarProc, name string) string {
	b, err := car.get("/metrics")
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+"{") && !strings.HasSuffix(line, " 0") {
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// registerThroughSipcar registers user (sipp, sidecar_register.xml) from addr in ns at sipcar's
// public listener, over TCP or UDP, and waits until the registrar's 200 came back.
func (tb *testbed) registerThroughSipcar(ns *netns, addr netip.Addr, user string, tcp bool) {
	tb.t.Helper()
	reg := tb.sipp(ns, "register-"+user+"-"+addr.String(), sippOpts{scenario: "sidecar_register.xml", local: addr.String(),
		remote: hostPort(publicAddr, 5060), tcp: tcp, service: user})
	reg.succeeded(tb.t, 20*time.Second, 1)
}
