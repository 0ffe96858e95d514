package integration

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Dual-stack upstream mode (issue 20): sipcar has an IPv4 and an IPv6 address on each side,
// phones and PBXs are of either family, and every address sipcar hands to a peer is in that
// peer's family, on that peer's side.

// dualLab is the upstream topology with both address plans on every link:
//
//	phone 198.51.100.20  (eth0) == out0 198.51.100.1  car  in0 198.18.0.1    == eth0 198.18.0.10    pbx
//	      2001:db8:b::20                2001:db8:b::1           2001:db8:a::1              2001:db8:a::10
//
// sipcar runs with both public addresses (SIPCAR_PUBLIC_ADDR), both inside-facing ones
// (SIPCAR_INSIDE_ADDR) and both inside networks; its listeners are the IPv4 wildcards of the
// defaults, which get IPv6 twins. The embedded upstreamLab's plan is the IPv4 one; tests name
// the plan of each peer.
type dualLab struct {
	*upstreamLab
	p4, p6 addrPlan
}

func newDualStackLab(tb *testbed) *dualLab { return newDualStackLabPlans(tb, plan4, plan6) }

// newDualStackLabPlans builds the dual-stack topology with an IPv4 and an IPv6 address plan.
func newDualStackLabPlans(tb *testbed, p4, p6 addrPlan) *dualLab {
	tb.t.Helper()
	l := &upstreamLab{testbed: tb, phone: tb.host("phone"), car: tb.host("car"), pbx: tb.host("pbx"), plan: p4}
	both := func(a4, a6 netip.Addr) []string { return []string{p4.cidr(a4), p6.cidr(a6)} }
	tb.link(end{l.car, "out0", both(p4.public, p6.public)}, end{l.phone, "eth0", both(p4.phone, p6.phone)})
	tb.link(end{l.car, "in0", both(p4.inside, p6.inside)}, end{l.pbx, "eth0", both(p4.pbx, p6.pbx)})
	return &dualLab{upstreamLab: l, p4: p4, p6: p6}
}

// sipcarEnv is sipcar's configuration in the dual-stack lab, both families on each side, with
// the PBX at pbx's address reached over upstreamTransport; extra variables follow (and win).
func (l *dualLab) sipcarEnv(pbx addrPlan, upstreamTransport string, extra ...string) []string {
	return append([]string{
		"SIPCAR_MODE=upstream",
		"SIPCAR_UPSTREAM=sip:" + hostPort(pbx.pbx, 5060) + ";transport=" + upstreamTransport,
		"SIPCAR_PUBLIC_ADDR=" + l.p4.public.String() + "," + l.p6.public.String(),
		"SIPCAR_INSIDE_ADDR=" + l.p4.inside.String() + "," + l.p6.inside.String(),
		"SIPCAR_INSIDE_NETS=" + l.p4.insideNet.String() + "," + l.p6.insideNet.String(),
		"SIPCAR_MEDIA_MODE=fallback",
	}, extra...)
}

// familyName is "IPv4" or "IPv6", for messages.
func familyName(p addrPlan) string {
	if p.phone.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// shortFamily is "v4" or "v6", for test names.
func shortFamily(p addrPlan) string {
	return strings.Replace(strings.ToLower(familyName(p)), "ip", "", 1)
}

// TestDualStackCall is each pairing of families in upstream mode with a dual-stack sipcar
// (phone -> PBX: IPv6 -> IPv4, IPv4 -> IPv6, IPv6 -> IPv6, IPv4 -> IPv4), over UDP and TCP, and
// the IPv6 phone to the IPv4 PBX once more with fan-in media (ip6 TPROXY rules): sipp UAC and
// UAS, the PBX echoing the phone's RTP. It checks that the call succeeds; that mid-call the
// media binding facing each peer is at sipcar's address of that peer's family and latched the
// other peer, with packets both ways; that the text displays draw every binding, IPv6 ones as
// [address]:port; that no media binding is left after BYE; and on captures of both of sipcar's
// links that every address in an address field of any message a peer receives (Request-URI,
// Via, Contact, Record-Route, Route, Path, SDP c=, o=, a=rtcp) is of that peer's family and on
// its side, that no packet of the other family crosses a link, and that RTP went both ways at
// each end.
func TestDualStackCall(t *testing.T) {
	type pairing struct {
		phone, pbx       addrPlan
		transport, media string
	}
	var cases []pairing
	for _, fam := range [][2]addrPlan{{plan6, plan4}, {plan4, plan6}, {plan6, plan6}, {plan4, plan4}} {
		for _, tr := range []string{"udp", "tcp"} {
			cases = append(cases, pairing{fam[0], fam[1], tr, "fallback"})
		}
	}
	cases = append(cases, pairing{plan6, plan4, "udp", "fanin"})
	for _, c := range cases {
		name := fmt.Sprintf("%s-%s-%s", shortFamily(c.phone), shortFamily(c.pbx), c.transport)
		if c.media != "fallback" {
			name += "-" + c.media
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testDualStackCall(t, c.phone, c.pbx, c.transport, c.media)
		})
	}
}

func testDualStackCall(t *testing.T, ph, px addrPlan, transport, mediaMode string) {
	l := newDualStackLab(newTestbed(t))
	tcp := transport == "tcp"
	public := l.capture(l.car, "out0", netip.AddrPortFrom(ph.phone, 9))
	inside := l.capture(l.car, "in0", netip.AddrPortFrom(px.pbx, 9))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: px.pbx.String(), tcp: tcp, echo: true})
	l.waitListening(l.pbx, transport, 5060)
	car := l.startSipcar(l.car, l.sipcarEnv(px, transport, "SIPCAR_MEDIA_MODE="+mediaMode)...)
	logCountersOnFailure(t, car)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: ph.phone.String(),
		remote: hostPort(ph.public, 5060), tcp: tcp, pauseMS: 3000, rtpPcap: true})

	phoneMedia, pbxMedia := netip.AddrPortFrom(ph.phone, 6000), netip.AddrPortFrom(px.pbx, 6000)
	m := car.waitMap(t, 20*time.Second, "media both ways through both sip-rtp bindings, each at sipcar's address of its peer's family", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 2 {
			return false
		}
		for _, e := range rtp {
			if e.PacketsSent == 0 || e.PacketsReceived == 0 || e.Peer == nil {
				return false
			}
			// The binding facing the inside is the PBX's view of the phone: at sipcar's
			// inside address of the PBX's family, relaying to the phone, latched on the PBX.
			want := map[string][3]netip.AddrPort{
				"inside":  {netip.AddrPortFrom(px.inside, 0), phoneMedia, pbxMedia},
				"outside": {netip.AddrPortFrom(ph.public, 0), pbxMedia, phoneMedia},
			}[e.Faces]
			if e.Address.Addr() != want[0].Addr() || e.ForwardTo != want[1] || *e.Peer != want[2] {
				return false
			}
		}
		return true
	})
	checkDisplays(t, car, m)

	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")

	pub, in := public.stop(t), inside.stop(t)
	checkPeerLink(t, peerLink{where: "the phone's link", pkts: pub, peer: ph.phone, side: ph.publicNet,
		media: phoneMedia, sipcar: ph.public, starts: []string{"SIP/2.0 180 ", "SIP/2.0 200 "}})
	checkPeerLink(t, peerLink{where: "the PBX's link", pkts: in, peer: px.pbx, side: px.insideNet,
		media: pbxMedia, sipcar: px.inside, starts: []string{"INVITE ", "ACK ", "BYE "}})
}

// peerLink is what a capture on the link between sipcar and one peer is checked against.
type peerLink struct {
	where  string
	pkts   []packet
	peer   netip.Addr   // the peer's address (its messages' destination)
	side   netip.Prefix // where every address handed to the peer must be: its own family and side
	media  netip.AddrPort
	sipcar netip.Addr // sipcar's address on the link
	starts []string   // start lines of messages the peer must have received
	minRTP int        // RTP packets wanted each way between media and sipcar (default 50)
}

// checkPeerLink checks a capture on one of sipcar's links: the peer received the messages
// named by starts; every address in an address field of every message to the peer lies in
// side (the peer's family, the peer's side); every UDP and TCP packet on the link is between
// addresses of side; and RTP went both ways between the peer's media address and sipcar.
func checkPeerLink(t *testing.T, c peerLink) {
	t.Helper()
	wire := wireMessages(c.pkts)
	var toPeer []wireMsg
	for _, w := range wire {
		if w.dst.Addr() == c.peer {
			toPeer = append(toPeer, w)
		}
	}
	for _, s := range c.starts {
		if countWireStarts(toPeer, s) == 0 {
			t.Errorf("%s: no %q message to %v (%d SIP messages to it)", c.where, s, c.peer, len(toPeer))
		}
	}
	checkAddressesIn(t, c.where, toPeer, c.side)
	bad := 0
	for _, p := range c.pkts {
		if !c.side.Contains(p.src.Addr()) || !c.side.Contains(p.dst.Addr()) {
			if bad < 5 {
				t.Errorf("%s: a packet outside %v: %v -> %v %s", c.where, c.side, p.src, p.dst, p.proto)
			}
			bad++
		}
	}
	from, to := 0, 0
	for _, p := range c.pkts {
		if p.proto != "udp" || !isRTP(p.payload) {
			continue
		}
		switch {
		case p.src == c.media && p.dst.Addr() == c.sipcar:
			from++
		case p.dst == c.media && p.src.Addr() == c.sipcar:
			to++
		}
	}
	minRTP := c.minRTP
	if minRTP == 0 {
		minRTP = 50 // sipp plays 100 packets and the other end echoes them
	}
	if from < minRTP || to < minRTP {
		t.Errorf("%s: RTP %v -> sipcar %d packets, sipcar -> %v %d; want at least %d each way", c.where, c.media, from, c.media, to, minRTP)
	}
	t.Logf("%s: %d SIP messages to %v; RTP %d from %v to sipcar, %d back", c.where, len(toPeer), c.peer, from, c.media, to)
}

// checkAddressesIn fails the test for every IP address in an address field of msgs that is
// not in side (of the other family, or of the other side).
func checkAddressesIn(t testing.TB, where string, msgs []wireMsg, side netip.Prefix) {
	t.Helper()
	for _, w := range msgs {
		for _, f := range addressFieldsOf(w.raw) {
			for _, a := range ipLiterals(f.value) {
				if !side.Contains(a) {
					t.Errorf("%s: %v in the %s of a message to the peer (want addresses of %v only): %q in\n%s",
						where, a, f.name, side, f.value, w.raw)
				}
			}
		}
	}
}

// field is one field of a SIP message that gives an address to be reached at or to reach:
// its name as [leakedFields] names it, and its value.
type field struct{ name, value string }

// addressFieldsOf returns a message's address fields: the Request-URI; every Via, Contact,
// Record-Route, Route and Path value (compact forms too); the SDP c=, o= and a=rtcp lines.
// From, To and Call-ID are identities, which sipcar leaves as they are (DESIGN.md).
func addressFieldsOf(msg []byte) []field {
	head, body, _ := strings.Cut(string(msg), "\r\n\r\n")
	lines := strings.Split(head, "\r\n")
	var fs []field
	if !strings.HasPrefix(lines[0], "SIP/2.0 ") {
		if parts := strings.Fields(lines[0]); len(parts) == 3 {
			fs = append(fs, field{"Request-URI", parts[1]})
		}
	}
	for _, l := range lines[1:] {
		name, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		if n := canonicalHeader(name); isAddressField(n) {
			fs = append(fs, field{n, strings.TrimSpace(v)})
		}
	}
	for _, l := range strings.Split(body, "\n") {
		l = strings.TrimRight(l, "\r")
		switch {
		case strings.HasPrefix(l, "c="), strings.HasPrefix(l, "o="):
			fs = append(fs, field{l[:2], l[2:]})
		case strings.HasPrefix(l, "a=rtcp:"):
			fs = append(fs, field{"a=rtcp", l[7:]})
		}
	}
	return fs
}

var (
	// ipv6Literal matches what may be an IPv6 address: hex groups with at least two colons,
	// perhaps ending in a dotted IPv4 part. Matches are checked by parsing.
	ipv6Literal = regexp.MustCompile(`[0-9A-Fa-f]*(?::[0-9A-Fa-f]*){2,}(?:\.[0-9]+){0,3}`)
	ipv4Literal = regexp.MustCompile(`\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}\b`)
)

// ipLiterals returns the IP addresses written in s: IPv6 addresses, bare or in brackets (also
// IPv4-mapped ones, and the three-colon form of RFC 5118 section 4.10), and IPv4 addresses. An
// IPv4-mapped IPv6 address is returned as the IPv4 address it stands for.
func ipLiterals(s string) []netip.Addr {
	var as []netip.Addr
	rest := []byte(s)
	for _, loc := range ipv6Literal.FindAllStringIndex(s, -1) {
		text := s[loc[0]:loc[1]]
		if a, err := netip.ParseAddr(strings.Replace(text, ":::", "::", 1)); err == nil {
			as = append(as, a.Unmap())
			for i := loc[0]; i < loc[1]; i++ {
				rest[i] = ' '
			}
		}
	}
	for _, text := range ipv4Literal.FindAllString(string(rest), -1) {
		if a, err := netip.ParseAddr(text); err == nil {
			as = append(as, a)
		}
	}
	return as
}

// checkDisplays checks the vendors' text displays against a snapshot of the server map taken
// just before: every binding has its line in /servermap?format=text,
//
//	Type: ALG, ANY -> [2001:db8:b::1]:20000[[2001:db8:b::20]:6000], Protocol: udp(Appro: sip-rtp), ...
//
// every sip-rtp binding that carried packets its line in /sessions?format=text,
//
//	sip-rtp  [2001:db8:b::20]:6000[198.18.0.1:20002] --> 198.18.0.10:6000  pkts N/M ...
//
// and every IPv6 address in either display is written in brackets, with a port after it.
func checkDisplays(t *testing.T, car *sipcarProc, m serverMap) {
	t.Helper()
	smap, err := car.get("/servermap?format=text")
	if err != nil {
		t.Error(err)
		return
	}
	sessions, err := car.get("/sessions?format=text")
	if err != nil {
		t.Error(err)
		return
	}
	for _, e := range m.Bindings {
		to := e.ForwardTo.String()
		if !e.ForwardTo.IsValid() || e.ForwardTo.Addr().IsUnspecified() {
			to = "ANY" // an answer's pair reserved with the offer
		}
		line := fmt.Sprintf(" -> %v[%s], Protocol: %s(Appro: %s), Left-Time: ", e.Address, to, e.Protocol, e.Type)
		if !strings.Contains(string(smap), line) {
			t.Errorf("/servermap?format=text has no line with %q (binding %v):\n%s", line, e, smap)
		}
		if e.Type == "sip-rtp" && e.Peer != nil {
			line := fmt.Sprintf("sip-rtp  %v[%v] --> %v  pkts ", e.ForwardTo, e.Address, *e.Peer)
			if !strings.Contains(string(sessions), line) {
				t.Errorf("/sessions?format=text has no line starting %q (binding %v):\n%s", line, e, sessions)
			}
		}
	}
	for name, text := range map[string]string{"/servermap": string(smap), "/sessions": string(sessions)} {
		for _, loc := range ipv6Literal.FindAllStringIndex(text, -1) {
			if _, err := netip.ParseAddr(text[loc[0]:loc[1]]); err != nil {
				continue
			}
			if loc[0] == 0 || text[loc[0]-1] != '[' || loc[1]+1 >= len(text) || text[loc[1]:loc[1]+2] != "]:" {
				t.Errorf("%s?format=text writes the IPv6 address %q without brackets and a port: %q", name, text[loc[0]:loc[1]],
					lineAt(text, loc[0]))
			}
		}
	}
	t.Logf("mid-call server map:\n%s\nmid-call session table:\n%s", smap, sessions)
}

// lineAt returns the line of text around offset i.
func lineAt(text string, i int) string {
	start := strings.LastIndexByte(text[:i], '\n') + 1
	end := strings.IndexByte(text[i:], '\n')
	if end < 0 {
		return text[start:]
	}
	return text[start : i+end]
}
