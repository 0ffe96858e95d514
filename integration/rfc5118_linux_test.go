package integration

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The RFC 5118 torture messages (rewrite/testdata/torture/rfc5118) through the running relay.
// They are adapted to the testbed, keeping every IPv6 textual form:
//
//   - the documentation prefix 2001:db8:: becomes the public side's 2001:db8:b:: (so the
//     RFC's server 2001:db8::10 is sipcar's public IPv6 address 2001:db8:b::10 in this lab, its
//     caller 2001:db8::9:1 is a phone address, 2001:db8:::192.0.2.1 keeps its three colons);
//   - 192.0.2.0/24, this machine's own network, becomes 203.0.113.0/24;
//   - the host name in the top Via of the section 4.10 messages (lab1.east.example.com, which
//     would need DNS) becomes the phone's address;
//   - each message's branches and Call-ID get a suffix of their own (several messages of the
//     RFC share one transaction, which sipcar would take for retransmissions);
//   - LF line endings become CRLF, the two messages without an end of headers get one, and
//     Content-Length is recomputed (testdata/torture/README.md).
//
// Each is sent to sipcar over UDP from the address and port its top Via names (the
// IPv4-mapped one over IPv4, from the IPv4 address it maps).

// rfc5118Case is what RFC 5118 asks of one message (rewrite/testdata/torture/MANIFEST.tsv).
type rfc5118Case struct {
	file    string
	section string
	refuse  bool // RFC 5118 asks for 400 Bad Request
	// What the Request-URI names: sipcar ("sipcar"), a host name ("name", forwarded as it is),
	// or another host's IP address, which the PBX must see at a binding of sipcar's that
	// stands for target (an address of the outside, which the PBX cannot reach).
	uri    string
	target netip.AddrPort
}

var rfc5118Cases = []rfc5118Case{
	{file: "ipv6-good", section: "4.1", uri: "sipcar"},
	{file: "ipv6-bad", section: "4.2", refuse: true}, // sip:2001:db8::10 without brackets: 400
	// sip:[2001:db8::10:5070] is well formed: "5070" is the address's last group, the host is
	// 2001:db8:b::10:5070 (not sipcar) at port 5060.
	{file: "port-ambiguous", section: "4.3", uri: "foreign", target: netip.MustParseAddrPort("[2001:db8:b::10:5070]:5060")},
	{file: "port-unambiguous", section: "4.4", uri: "sipcar"},              // sip:[2001:db8::10]:5070
	{file: "via-received-param-with-delim", section: "4.5", uri: "sipcar"}, // must parse (received=[...])
	{file: "via-received-param-no-delim", section: "4.5", uri: "sipcar"},
	{file: "ipv6-in-sdp", section: "4.6", uri: "sipcar"},
	{file: "mult-ip-in-header", section: "4.7", uri: "name"}, // sip:user@host.example.net
	{file: "mult-ip-in-sdp", section: "4.8", uri: "sipcar"},
	{file: "ipv4-mapped-ipv6", section: "4.9", uri: "name"}, // sip:user@example.com
	// Must be tolerated; the host is 2001:db8:b::203.0.113.1 either way.
	{file: "ipv6-bug-abnf-3-colons", section: "4.10", uri: "foreign", target: netip.MustParseAddrPort("[2001:db8:b::203.0.113.1]:5060")},
	{file: "ipv6-correct-abnf-2-colons", section: "4.10", uri: "foreign", target: netip.MustParseAddrPort("[2001:db8:b::203.0.113.1]:5060")},
}

// rfc5118Public is sipcar's public IPv6 address in this test: the RFC's server, 2001:db8::10.
var rfc5118Public = netip.MustParseAddr("2001:db8:b::10")

// rfc5118Message reads a message of RFC 5118 and adapts it to the testbed (see above).
func rfc5118Message(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "rewrite", "testdata", "torture", "rfc5118", name+".dat"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	s = strings.ReplaceAll(s, "2001:db8::", "2001:db8:b::")
	s = strings.ReplaceAll(s, "192.0.2.", "203.0.113.")
	s = strings.ReplaceAll(s, "Via: SIP/2.0/UDP lab1.east.example.com;", "Via: SIP/2.0/UDP [2001:db8:b::20];")
	s = regexp.MustCompile(`branch=([^;\s]+)`).ReplaceAllString(s, "branch=${1}-"+name)
	s = regexp.MustCompile(`(?m)^Call-ID: (\S+)$`).ReplaceAllString(s, "Call-ID: ${1}-"+name)
	head, body, found := strings.Cut(s, "\n\n")
	if !found {
		head, body = strings.TrimSuffix(s, "\n"), ""
	}
	var lines []string
	for _, l := range strings.Split(head, "\n") {
		if strings.HasPrefix(strings.ToLower(l), "content-length:") {
			l = "Content-Length: " + strconv.Itoa(len(strings.ReplaceAll(body, "\n", "\r\n")))
		}
		lines = append(lines, l)
	}
	return []byte(strings.Join(lines, "\r\n") + "\r\n\r\n" + strings.ReplaceAll(body, "\n", "\r\n"))
}

// TestRFC5118 sends each RFC 5118 message from a phone outside to a dual-stack sipcar, with the
// PBX (a Go peer) on IPv6 and on IPv4. ipv6-bad (section 4.2) must be answered 400 and never
// reach the PBX. Every other message must reach the PBX with only addresses changed: with every
// IP address (and the port after it), the SDP m= and a=rtcp ports and the IN IP4/IP6 of SDP
// masked, its lines are the lines sent, Content-Length aside. At the PBX, its top Via, Contact
// and SDP c= and o= addresses are sipcar's inside address of the PBX's family (each stream of
// mult-ip-in-sdp, one IPv4 and one IPv6, too), no IPv4 address is in brackets, and its
// Request-URI is on the PBX's side when it named sipcar, unchanged when it named a host name,
// and at a binding of sipcar's standing for the host when it named another one by address
// (port-ambiguous: [2001:db8:b::10:5070] is the host 2001:db8:b::10:5070 at port 5060, not
// sipcar at 5070; 4.10: both forms are 2001:db8:b::203.0.113.1). The PBX's answer must reach
// the phone with the Vias it sent, the same hops and the same text, a REGISTER's 200 with the
// phone's Contact as it wrote it (RFC 3261 section 19.1.4: a URI without a port does not match
// one with :5060), and no inside address.
func TestRFC5118(t *testing.T) {
	for _, pbxPlan := range []addrPlan{plan6, plan4} {
		t.Run("to-"+shortFamily(pbxPlan)+"-pbx", func(t *testing.T) {
			t.Parallel()
			testRFC5118(t, pbxPlan)
		})
	}
}

func testRFC5118(t *testing.T, px addrPlan) {
	// sipcar's public IPv6 address is the RFC's server; the phone namespace also has the RFC's
	// caller 2001:db8:b::9:1, and 203.0.113.10 for the IPv4-mapped message (routed on the link).
	p6 := plan6
	p6.public = rfc5118Public
	l := newDualStackLabPlans(newTestbed(t), plan4, p6)
	for _, c := range [][]string{
		{"-n", l.phone.name, "addr", "add", "2001:db8:b::9:1/64", "dev", "eth0", "nodad"},
		{"-n", l.phone.name, "addr", "add", "203.0.113.10/32", "dev", "eth0"},
		{"-n", l.car.name, "route", "add", "203.0.113.10/32", "dev", "out0"},
	} {
		if err := ipCmd(c...); err != nil {
			t.Fatal(err)
		}
	}
	pbx := l.udpPeer(l.pbx, netip.AddrPortFrom(px.pbx, 5060))
	car := l.startSipcar(l.car, l.sipcarEnv(px, "udp")...)
	logCountersOnFailure(t, car)

	phones := make(map[netip.AddrPort]*udpPeer)
	refused := make(map[string]bool) // Call-IDs that must not reach the PBX
	var atPBX []rawSIP               // everything the PBX received
	for _, c := range rfc5118Cases {
		t.Run(c.file, func(t *testing.T) {
			msg := rfc5118Message(t, c.file)
			callID := rawHeader(msg, "Call-ID")
			from, err := topViaAddr(msg)
			if err != nil {
				t.Fatal(err)
			}
			to := netip.AddrPortFrom(rfc5118Public, 5060)
			if from.Addr().Is4In6() {
				from, to = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), netip.AddrPortFrom(plan4.public, 5060)
			}
			phone := phones[from]
			if phone == nil {
				phone = l.udpPeer(l.phone, from)
				phones[from] = phone
			}
			phone.send(t, to, msg)

			if c.refuse {
				refused[callID] = true
				resp, err := recvRaw(phone, 10*time.Second, func(r rawSIP) bool { return rawHeader(r.raw, "Call-ID") == callID })
				if err != nil {
					t.Fatalf("RFC 5118 section %s asks for 400 Bad Request; sipcar's answer: %v", c.section, err)
				}
				if !bytes.HasPrefix(resp.raw, []byte("SIP/2.0 400 ")) {
					t.Errorf("RFC 5118 section %s asks for 400 Bad Request; sipcar answered %q", c.section, firstLine(resp.raw))
				}
				return
			}

			got, err := recvRaw(pbx, 10*time.Second, func(r rawSIP) bool {
				atPBX = append(atPBX, r)
				return rawHeader(r.raw, "Call-ID") == callID
			})
			if err != nil {
				t.Fatalf("RFC 5118 section %s: the message did not reach the PBX (%v); sipcar's answer to the phone: %s",
					c.section, err, answerOf(phone, callID))
			}
			t.Logf("sent:\n%s\nat the PBX:\n%s", msg, got.raw)
			checkOnlyAddressesChanged(t, msg, got.raw)
			checkForwardedRFC5118(t, c, msg, got.raw, px, car)

			// The PBX answers; the phone gets the answer with its own Vias.
			code, reason := 200, "OK"
			var extra []string
			switch rawMethod(got.raw) {
			case "INVITE":
				code, reason = 486, "Busy Here"
			case "BYE":
				code, reason = 481, "Call/Transaction Does Not Exist"
			case "REGISTER":
				extra = append(extra, "Contact: "+rawHeader(got.raw, "Contact")+";expires=60")
			}
			pbx.send(t, got.src, rawResponse(got.raw, code, reason, extra))
			resp, err := recvRaw(phone, 10*time.Second, func(r rawSIP) bool {
				return rawHeader(r.raw, "Call-ID") == callID && bytes.HasPrefix(r.raw, []byte("SIP/2.0 "))
			})
			if err != nil {
				t.Fatalf("the PBX's %d did not reach the phone: %v", code, err)
			}
			if want := fmt.Sprintf("SIP/2.0 %d ", code); !bytes.HasPrefix(resp.raw, []byte(want)) {
				t.Errorf("the phone got %q; want the PBX's %d", firstLine(resp.raw), code)
			}
			checkViasRestored(t, rawHeaders(msg, "Via"), rawHeaders(resp.raw, "Via"))
			if rawMethod(msg) == "REGISTER" {
				if got, want := rawHeader(resp.raw, "Contact"), rawHeader(msg, "Contact")+";expires=60"; got != want {
					t.Errorf("the REGISTER's 200 at the phone lists Contact %q; want the phone's own, %q", got, want)
				}
			}
			for _, f := range addressFieldsOf(resp.raw) {
				for _, a := range ipLiterals(f.value) {
					if plan4.insideNet.Contains(a) || plan6.insideNet.Contains(a) {
						t.Errorf("an inside address in the %s of the answer at the phone: %q", f.name, f.value)
					}
				}
			}
			if rawMethod(msg) == "INVITE" {
				phone.send(t, to, rawACK(msg, resp.raw))
				car.waitNoMedia(t, fmt.Sprintf("the %d to the INVITE", code))
			}
		})
	}
	// Whatever the PBX still has queued: none of it may be a refused message.
	if rest, err := recvRaw(pbx, 500*time.Millisecond, func(r rawSIP) bool { atPBX = append(atPBX, r); return false }); err == nil {
		atPBX = append(atPBX, rest)
	}
	for _, r := range atPBX {
		if refused[rawHeader(r.raw, "Call-ID")] {
			t.Errorf("a message RFC 5118 asks to refuse reached the PBX:\n%s", r.raw)
		}
	}
}

// checkViasRestored compares the Vias of an answer at the phone with those of its request as the
// phone sent them: they must be the same hops (transport, sent-by address and port, the port
// 5060 when none is written, an IPv4-mapped address as the IPv4 address; the parameters, a
// received address read the same way), and, as RFC 3261 section 8.2.6.2 has a UAS copy them
// and DESIGN.md has sipcar put back the original address, the same text.
func checkViasRestored(t *testing.T, sent, got []string) {
	t.Helper()
	if len(sent) != len(got) {
		t.Errorf("the answer at the phone has %d Vias, the request had %d:\n  %s", len(got), len(sent), strings.Join(got, "\n  "))
		return
	}
	for i := range sent {
		if s, g := viaMeaning(sent[i]), viaMeaning(got[i]); s != g {
			t.Errorf("Via %d of the answer at the phone is another hop than the phone wrote:\n  got  %q (%s)\n  sent %q (%s)", i+1, got[i], g, sent[i], s)
		} else if sent[i] != got[i] {
			t.Errorf("Via %d of the answer at the phone is not written as the phone wrote it (the same hop, another text):\n  got  %q\n  sent %q", i+1, got[i], sent[i])
		}
	}
}

// viaMeaning reads a Via value as what it means: transport, sent-by (address and port, 5060 by
// default, IPv4-mapped addresses unmapped) and parameters (received as an address).
func viaMeaning(v string) string {
	proto, rest, _ := strings.Cut(v, " ")
	sentBy, params, _ := strings.Cut(strings.TrimSpace(rest), ";")
	hostPort := func(s string) string {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
		}
		if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
			return netip.AddrPortFrom(a.Unmap(), 5060).String()
		}
		return s
	}
	out := strings.ToUpper(proto) + " " + hostPort(sentBy)
	for _, p := range strings.Split(params, ";") {
		if name, val, ok := strings.Cut(p, "="); ok && strings.EqualFold(name, "received") {
			if a, err := netip.ParseAddr(strings.Trim(val, "[]")); err == nil {
				p = "received=" + a.Unmap().String()
			}
		}
		out += ";" + p
	}
	return out
}

// checkOnlyAddressesChanged compares a message as sent and as forwarded, with every address
// masked: the lines must be the same, but for Content-Length.
func checkOnlyAddressesChanged(t *testing.T, sent, fwd []byte) {
	t.Helper()
	a, b := maskAddresses(sent), maskAddresses(fwd)
	if strings.Join(a, "\n") == strings.Join(b, "\n") {
		return
	}
	var diff []string
	for i := 0; i < max(len(a), len(b)); i++ {
		var la, lb string
		if i < len(a) {
			la = a[i]
		}
		if i < len(b) {
			lb = b[i]
		}
		if la != lb {
			diff = append(diff, fmt.Sprintf("  sent      %q\n  forwarded %q", la, lb))
		}
	}
	t.Errorf("the message was forwarded with more than addresses changed (addresses masked):\n%s\nsent:\n%s\nforwarded:\n%s",
		strings.Join(diff, "\n"), sent, fwd)
}

var (
	bracketedIPv4 = regexp.MustCompile(`\[[0-9]{1,3}(?:\.[0-9]{1,3}){3}\]`)
	maskBracketed = regexp.MustCompile(`\[[0-9A-Fa-f:.]+\](?::[0-9]+)?`)
	maskIPv4      = regexp.MustCompile(`\b[0-9]{1,3}(?:\.[0-9]{1,3}){3}\b(?::[0-9]+)?`)
	maskSDPPort   = regexp.MustCompile(`^(m=\S+ |a=rtcp:)[0-9]+`)
	maskSDPFamily = regexp.MustCompile(`\bIN IP[46] `)
)

// maskAddresses returns the lines of a message with every IP address (and the port after it)
// written ADDR, the SDP m= and a=rtcp ports PORT, "IN IP4"/"IN IP6" as "IN IPx", and
// Content-Length's value N.
func maskAddresses(msg []byte) []string {
	lines := strings.Split(strings.TrimRight(string(msg), "\r\n"), "\r\n")
	for i, l := range lines {
		if n, _, ok := strings.Cut(l, ":"); ok && (strings.EqualFold(strings.TrimSpace(n), "Content-Length") || strings.TrimSpace(n) == "l") {
			lines[i] = "Content-Length: N"
			continue
		}
		l = maskBracketed.ReplaceAllString(l, "ADDR")
		l = ipv6Literal.ReplaceAllStringFunc(l, func(s string) string {
			if _, err := netip.ParseAddr(strings.Replace(s, ":::", "::", 1)); err == nil {
				return "ADDR"
			}
			return s
		})
		l = maskIPv4.ReplaceAllString(l, "ADDR")
		l = maskSDPPort.ReplaceAllString(l, "${1}PORT")
		lines[i] = maskSDPFamily.ReplaceAllString(l, "IN IPx ")
	}
	return lines
}

// checkForwardedRFC5118 checks the addresses of a message as the PBX got it: its top Via,
// Contact and SDP c= and o= addresses at sipcar's inside address of the PBX's family; its
// Request-URI at the PBX's side if it named sipcar, at a binding for the host it named if it
// named another one by its address, unchanged if it named a host name. No IPv4 address in
// brackets.
func checkForwardedRFC5118(t *testing.T, c rfc5118Case, sent, fwd []byte, px addrPlan, car *sipcarProc) {
	t.Helper()
	if b := bracketedIPv4.Find(fwd); b != nil {
		t.Errorf("the PBX got an IPv4 address in brackets, %s (brackets enclose IPv6 references only, RFC 3261 section 25.1)", b)
	}
	want := func(what, value string) {
		t.Helper()
		as := ipLiterals(value)
		if len(as) == 0 && !strings.Contains(value, "example.") {
			t.Errorf("%s %q at the PBX: no address", what, value)
		}
		for _, a := range as {
			if a != px.inside {
				t.Errorf("%s %q at the PBX: %v; want sipcar's inside %s address %v", what, value, a, familyName(px), px.inside)
			}
		}
	}
	if vias := rawHeaders(fwd, "Via"); len(vias) > 0 {
		sentBy, _, _ := strings.Cut(vias[0], ";")
		want("the top Via's sent-by", sentBy)
		// A received parameter of the top Via names the phone's side: not for the PBX.
		if _, params, ok := strings.Cut(vias[0], ";"); ok {
			for _, a := range ipLiterals(params) {
				if !px.insideNet.Contains(a) {
					t.Errorf("the top Via at the PBX has a parameter naming %v: %q", a, vias[0])
				}
			}
		}
	} else {
		t.Errorf("no Via at the PBX:\n%s", fwd)
	}
	for _, ct := range rawHeaders(fwd, "Contact") {
		want("Contact", ct)
	}
	_, body, _ := strings.Cut(string(fwd), "\r\n\r\n")
	for _, l := range strings.Split(body, "\r\n") {
		if strings.HasPrefix(l, "c=") || (strings.HasPrefix(l, "o=") && !strings.Contains(l, "example.")) {
			want("SDP "+l[:2], l)
		}
	}
	uri, sentURI := strings.Fields(firstLine(fwd)), strings.Fields(firstLine(sent))
	if len(uri) != 3 || len(sentURI) != 3 {
		t.Errorf("start line %q (sent %q)", firstLine(fwd), firstLine(sent))
		return
	}
	switch c.uri {
	case "name":
		if uri[1] != sentURI[1] {
			t.Errorf("Request-URI %q, a host name, reached the PBX as %q; want it unchanged", sentURI[1], uri[1])
		}
	case "sipcar":
		for _, a := range ipLiterals(uri[1]) {
			if !px.insideNet.Contains(a) {
				t.Errorf("Request-URI %q, which names sipcar, reached the PBX as %q: %v is not on the PBX's side (%v)", sentURI[1], uri[1], a, px.insideNet)
			}
		}
	case "foreign":
		at, err := uriAddrAny(uri[1])
		if err != nil || at.Addr() != px.inside {
			t.Errorf("Request-URI %q reached the PBX as %q; want it at a binding of sipcar's inside %s address (it names %v, outside)",
				sentURI[1], uri[1], familyName(px), c.target)
			return
		}
		var binding *entry
		for _, e := range car.mustServerMap(t).of("sip") {
			if e.Address == at {
				binding = &e
			}
		}
		if binding == nil || binding.ForwardTo != c.target {
			t.Errorf("Request-URI %q reached the PBX as %q, whose binding is %v; want it to stand for %v (RFC 5118 section %s)",
				sentURI[1], uri[1], binding, c.target, c.section)
		}
	}
}

// rawSIP is a SIP message received as bytes, for messages sipgo need not parse.
type rawSIP struct {
	raw []byte
	src netip.AddrPort
}

// recvRaw returns the next datagram at p for which want is true, skipping the others, or an
// error after timeout.
func recvRaw(p *udpPeer, timeout time.Duration, want func(rawSIP) bool) (rawSIP, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65535)
	for {
		if err := p.conn.SetReadDeadline(deadline); err != nil {
			return rawSIP{}, err
		}
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return rawSIP{}, errNothing
			}
			return rawSIP{}, err
		}
		r := rawSIP{raw: append([]byte(nil), buf[:n]...), src: from}
		if want(r) {
			return r, nil
		}
	}
}

// answerOf says what sipcar answered the phone for a Call-ID, if anything, within a second.
func answerOf(p *udpPeer, callID string) string {
	r, err := recvRaw(p, time.Second, func(r rawSIP) bool { return rawHeader(r.raw, "Call-ID") == callID })
	if err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%q", firstLine(r.raw))
}

// rawHeaders returns the values of the header lines named name (or its compact form) of a
// message, as written.
func rawHeaders(msg []byte, name string) []string {
	head, _, _ := strings.Cut(string(msg), "\r\n\r\n")
	var vs []string
	for _, l := range strings.Split(head, "\r\n")[1:] {
		n, v, ok := strings.Cut(l, ":")
		if ok && canonicalHeader(n) == canonicalHeader(name) {
			vs = append(vs, strings.TrimSpace(v))
		}
	}
	return vs
}

// rawHeader returns the first value of a header, or "".
func rawHeader(msg []byte, name string) string {
	if vs := rawHeaders(msg, name); len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// rawMethod returns a request's method, "" for a response.
func rawMethod(msg []byte) string {
	if bytes.HasPrefix(msg, []byte("SIP/2.0 ")) {
		return ""
	}
	m, _, _ := strings.Cut(firstLine(msg), " ")
	return m
}

// topViaAddr returns the sent-by of a message's top Via (port 5060 when it names none).
func topViaAddr(msg []byte) (netip.AddrPort, error) {
	f := strings.Fields(rawHeader(msg, "Via"))
	if len(f) < 2 {
		return netip.AddrPort{}, fmt.Errorf("no Via in\n%s", msg)
	}
	sentBy, _, _ := strings.Cut(f[1], ";")
	if ap, err := netip.ParseAddrPort(sentBy); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(strings.Trim(sentBy, "[]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("top Via sent-by %q: %w", sentBy, err)
	}
	return netip.AddrPortFrom(a, 5060), nil
}

// rawResponse answers a request: its Vias as they came, From, To (with a tag), Call-ID and
// CSeq, then extra headers.
func rawResponse(req []byte, code int, reason string, extra []string) []byte {
	var hs []string
	for _, v := range rawHeaders(req, "Via") {
		hs = append(hs, "Via: "+v)
	}
	to := rawHeader(req, "To")
	if !strings.Contains(to, ";tag=") {
		to += ";tag=pbx5118"
	}
	hs = append(hs, "From: "+rawHeader(req, "From"), "To: "+to, "Call-ID: "+rawHeader(req, "Call-ID"), "CSeq: "+rawHeader(req, "CSeq"))
	return buildSIP(fmt.Sprintf("SIP/2.0 %d %s", code, reason), append(hs, extra...), "")
}

// rawACK is the ACK of a non-2xx final response to an INVITE (RFC 3261 section 17.1.1.3): the
// INVITE's Request-URI, top Via, From, Call-ID and CSeq number, the response's To.
func rawACK(invite, resp []byte) []byte {
	seq, _, _ := strings.Cut(rawHeader(invite, "CSeq"), " ")
	uri := strings.Fields(firstLine(invite))[1]
	return buildSIP("ACK "+uri+" SIP/2.0", []string{
		"Via: " + rawHeader(invite, "Via"), "From: " + rawHeader(invite, "From"), "To: " + rawHeader(resp, "To"),
		"Call-ID: " + rawHeader(invite, "Call-ID"), "CSeq: " + seq + " ACK", "Max-Forwards: 70",
	}, "")
}
