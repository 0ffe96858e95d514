package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The attack tests (issue 21): each attacks a running sipcar from the phone's namespace as
// anyone on the internet could, logs sipcar's figures (ports, descriptors, memory, goroutines),
// what reached the attack's targets and whether a legitimate phone's call went through, and then
// checks that sipcar held: nothing reached a target, every resource stayed under its cap, every
// refusal was counted by its cause, and the phone's call completed. The figures come first, so
// that a run shows them also when the checks fail.

// TestAttackUnsolicitedResponse sends SIP responses that answer no request of sipcar's, whose
// top Via (its sent-by, or received and rport) names a target: a TCP service inside (a Redis
// port), another inside UDP port, a port on sipcar's own loopback (beside its admin endpoint)
// and a third party on the internet. They go over UDP and TCP to sipcar's public listener, and
// to a signalling binding's public port. Nothing may reach any target (no connection, no
// datagram), each response is dropped as "unmatched-response", the binding's owner gets only
// the response to its own request, and a phone's call completes afterwards.
func TestAttackUnsolicitedResponse(t *testing.T) {
	t.Parallel()
	const attack = "unsolicited responses"
	l := newAttackLab(t, nil)
	l.addPhoneAddr(attackerAddr)
	l.addPhoneAddr(thirdPartyAddr)
	// The inside hosts reach sipcar's public address, as through a default gateway: a connection
	// sipcar opens to them from there can complete.
	if err := ipCmd("-n", l.pbx.name, "route", "add", l.plan.publicNet.String(), "via", insideAddr.String()); err != nil {
		t.Fatal(err)
	}
	targets := []*sink{
		l.sink(l.pbx, "inside TCP service", netip.AddrPortFrom(pbxAddr, 6379)),
		l.sink(l.pbx, "inside UDP port", netip.AddrPortFrom(pbxAddr, 9999)),
		l.sink(l.car, "sipcar's loopback", netip.MustParseAddrPort("127.0.0.1:9070")),
		l.sink(l.phone, "third party on the internet", netip.AddrPortFrom(thirdPartyAddr, 5060)),
	}

	// A signalling binding on the public side: the phone registers, and an inside host's request
	// to the phone's inside binding leaves from a binding that stands for the host; the phone's
	// answer to it comes back there.
	phone := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	if resp, err := register(udpEndpoint{phone}, "phone", "phone-reg", "", 10*time.Second); err != nil {
		t.Fatalf("the phone's REGISTER: %v", err)
	} else if resp.status() != 200 {
		t.Fatalf("the phone's REGISTER answered %q", resp.start)
	}
	var phoneBinding netip.AddrPort
	for _, e := range l.sipcar.mustServerMap(t).of("sip") {
		if e.ForwardTo == phone.addr && e.Faces == "inside" {
			phoneBinding = e.Address
		}
	}
	if !phoneBinding.IsValid() {
		t.Fatalf("no inside binding for the registered phone:\n%v", l.sipcar.mustServerMap(t))
	}
	host := l.udpPeer(l.pbx, netip.AddrPortFrom(pbxAddr, 5090))
	host.send(t, phoneBinding, buildSIP(fmt.Sprintf("OPTIONS sip:phone@%v SIP/2.0", phoneBinding), []string{
		"Via: SIP/2.0/UDP 198.18.0.10:5090;branch=z9hG4bKhostoptions",
		"From: <sip:host@198.18.0.10>;tag=host", "To: <sip:phone@198.51.100.20>", "Call-ID: host-options",
		"CSeq: 1 OPTIONS", "Max-Forwards: 70",
	}, ""))
	opts := phone.recv(t, 10*time.Second, "the inside host's OPTIONS at the phone", isRequest("OPTIONS"))
	binding, err := opts.viaAddr()
	if err != nil {
		t.Fatal(err)
	}
	if binding.Addr() != publicAddr || binding.Port() == 5060 {
		t.Fatalf("the inside host's OPTIONS reached the phone with top Via %v; want a signalling binding at %v", binding, publicAddr)
	}
	phone.send(t, binding, response(opts, 200, "OK", "phone", nil, ""))
	host.recv(t, 10*time.Second, "the phone's answer to the OPTIONS at the inside host", isResponse("OPTIONS", 200))

	atkUDP := udpEndpoint{l.udpPeer(l.phone, netip.AddrPortFrom(attackerAddr, 5060))}
	type path struct {
		name string
		ep   sipEndpoint
		dst  netip.AddrPort
	}
	paths := []path{{"UDP to the public listener", atkUDP, sipcarListen}}
	if c, err := dialTCPEndpoint(t, l.phone, attackerAddr, sipcarListen); err != nil {
		t.Errorf("TCP connection to sipcar's public listener: %v", err)
	} else {
		paths = append(paths, path{"TCP to the public listener", c, sipcarListen})
	}
	paths = append(paths, path{"UDP to a signalling binding", atkUDP, binding})
	if c, err := dialTCPEndpoint(t, l.phone, attackerAddr, binding); err != nil {
		t.Logf("no TCP on the signalling binding's port %v (%v): that path is not tried", binding, err)
	} else {
		paths = append(paths, path{"TCP to a signalling binding", c, binding})
	}

	before := l.sipcar.metricsOr(t)
	sent := 0
	for pi, p := range paths {
		for ti, target := range targets {
			for vi, via := range []string{
				fmt.Sprintf("SIP/2.0/UDP %v", target.addr),
				fmt.Sprintf("SIP/2.0/TCP %v", target.addr),
				fmt.Sprintf("SIP/2.0/UDP %v;received=%v;rport=%d", netip.AddrPortFrom(attackerAddr, 5060), target.addr.Addr(), target.addr.Port()),
				fmt.Sprintf("SIP/2.0/TCP %v;received=%v;rport=%d", netip.AddrPortFrom(attackerAddr, 5060), target.addr.Addr(), target.addr.Port()),
			} {
				id := fmt.Sprintf("unsolicited-%d-%d-%d", pi, ti, vi)
				msg := buildSIP("SIP/2.0 200 OK", []string{
					"Via: " + via + ";branch=z9hG4bK" + id,
					"From: <sip:attacker@198.51.100.66>;tag=a" + id,
					"To: <sip:victim@198.51.100.1>;tag=v" + id,
					"Call-ID: " + id,
					"CSeq: 1 INVITE",
					"Content-Type: text/plain",
				}, "PING\r\nSET sipcar owned\r\nQUIT\r\n")
				if err := p.ep.send(p.dst, msg); err != nil {
					t.Errorf("%s: %v", p.name, err)
					continue
				}
				sent++
			}
		}
	}
	received := func(ms map[string]float64) float64 { return sumMetric(ms, "sipcar_sip_messages_received_total") }
	ok, state := poll(20*time.Second, func() (bool, string) {
		ms, err := l.sipcar.tryMetrics()
		if err != nil {
			return false, err.Error()
		}
		got := received(ms) - received(before)
		return got >= float64(sent), fmt.Sprintf("sipcar received %.0f of the %d responses", got, sent)
	})
	if !ok {
		t.Errorf("%s", state)
	}
	callErr := l.phoneCall(netip.AddrPortFrom(phoneAddr, 5072), "after-unsolicited")
	time.Sleep(2 * time.Second) // what sipcar sends on the responses' behalf is on its way by now
	after := l.sipcar.metricsOr(t)

	l.sipcar.figures(t, attack, "after")
	t.Logf("figure %s: %d responses sent over %d paths", attack, sent, len(paths))
	for _, s := range targets {
		t.Logf("figure %s: reached %s", attack, s)
	}
	hostGot := 0
	for {
		if _, err := host.tryRecv(100*time.Millisecond, nil); err != nil {
			break
		}
		hostGot++
	}
	t.Logf("figure %s: messages at the binding's owner (inside host) after its own answer: %d", attack, hostGot)
	t.Logf("figure %s: responses that reached the PBX: %d", attack, len(l.srv.gotResponses()))
	t.Logf("figure %s: dropped as unmatched-response: %.0f", attack, dropped(after, "unmatched-response")-dropped(before, "unmatched-response"))
	t.Logf("figure %s: phone's call after the attack: %s", attack, outcome(callErr))

	for _, s := range targets {
		if s.reached() {
			t.Errorf("an unsolicited response made sipcar reach the %s", s)
		}
	}
	if hostGot != 0 {
		t.Errorf("the inside host behind the signalling binding received %d unsolicited responses", hostGot)
	}
	if n := len(l.srv.gotResponses()); n != 0 {
		t.Errorf("the PBX received %d responses to requests it never sent", n)
	}
	if got := dropped(after, "unmatched-response") - dropped(before, "unmatched-response"); got < float64(sent) {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="unmatched-response"} rose by %.0f; want %d (every response sent)`, got, sent)
	}
	if callErr != nil {
		t.Errorf("the phone's call after the attack: %v", callErr)
	}
}

// TestAttackForgedResponse forges responses to a transaction sipcar did forward: the PBX calls
// a registered phone, and before the phone answers, an attacker on another address sends a 200
// OK with the INVITE's exact Via, and the phone's own address sends one with another branch.
// Neither may reach the PBX (dropped, counted as "response-source" and "unmatched-response");
// the phone's real answer then passes and the call completes (ACK, BYE, 200).
func TestAttackForgedResponse(t *testing.T) {
	t.Parallel()
	const attack = "forged responses"
	l := newGoLab(t)
	l.addPhoneAddr(attackerAddr)
	attacker := l.udpPeer(l.phone, netip.AddrPortFrom(attackerAddr, 5060))

	// The phone registers: the PBX learns its inside binding.
	l.phoneSIP.send(t, sipcarListen, buildSIP("REGISTER sip:198.51.100.1 SIP/2.0", []string{
		"Via: SIP/2.0/UDP 198.51.100.20:5070;branch=z9hG4bKforgedreg", "From: <sip:phone@198.51.100.1>;tag=reg",
		"To: <sip:phone@198.51.100.1>", "Call-ID: forged-reg", "CSeq: 1 REGISTER", "Contact: <sip:phone@198.51.100.20:5070>",
		"Expires: 300", "Max-Forwards: 70",
	}, ""))
	reg := l.pbxSIP.recv(t, 10*time.Second, "the phone's REGISTER at the PBX", isRequest("REGISTER"))
	back, err := reg.viaAddr()
	if err != nil {
		t.Fatal(err)
	}
	l.pbxSIP.send(t, back, response(reg, 200, "OK", "pbx", []string{"Expires: 300"}, ""))
	l.phoneSIP.recv(t, 10*time.Second, "the 200 to the REGISTER at the phone", isResponse("REGISTER", 200))
	target, err := uriAddr(reg.contactURI())
	if err != nil {
		t.Fatal(err)
	}

	// The PBX calls the phone at its binding.
	dialog := []string{"From: <sip:pbx@198.18.0.10>;tag=pbxcall", "To: <sip:phone@198.51.100.1>", "Call-ID: forged-call"}
	l.pbxSIP.send(t, target, buildSIP("INVITE "+reg.contactURI()+" SIP/2.0", append([]string{
		"Via: SIP/2.0/UDP 198.18.0.10:5060;branch=z9hG4bKpbxinvite", "CSeq: 1 INVITE", "Contact: <sip:pbx@198.18.0.10:5060>",
		"Max-Forwards: 70", "Content-Type: application/sdp"}, dialog...), offer(netip.AddrPortFrom(pbxAddr, 8000))))
	inv := l.phoneSIP.recv(t, 10*time.Second, "the PBX's INVITE at the phone", isRequest("INVITE"))
	replyTo, err := inv.viaAddr()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the INVITE reached the phone from %v with top Via %q", inv.from, inv.header("Via"))

	before := l.sipcar.metricsOr(t)
	answer := func(tag string, from netip.AddrPort) []byte {
		return response(inv, 200, "OK", tag, []string{"Contact: <sip:phone@" + from.String() + ">", "Content-Type: application/sdp"},
			offer(netip.AddrPortFrom(from.Addr(), 7000)))
	}
	// 1. From another source, with the INVITE's own Via.
	attacker.send(t, replyTo, answer("forged", attacker.addr))
	// 2. From the phone's own address, with another branch.
	l.phoneSIP.send(t, replyTo, response(withTopBranch(inv, "z9hG4bKnotsipcars"), 200, "OK", "otherbranch",
		[]string{"Contact: <sip:phone@198.51.100.20:5070>", "Content-Type: application/sdp"}, offer(netip.AddrPortFrom(phoneAddr, 7000))))
	// 3. The real answer.
	l.phoneSIP.send(t, replyTo, response(inv, 180, "Ringing", "phone", nil, ""))
	l.phoneSIP.send(t, replyTo, answer("phone", l.phoneSIP.addr))

	// sipcar reads the listener's datagrams in order: the forgeries come to the PBX, if at all,
	// before the real answer.
	var got []string
	var real *sipMsg
	callErr := func() error {
		for {
			m, err := l.pbxSIP.tryRecv(10*time.Second, func(m *sipMsg) bool { return m.status() != 0 && m.cseqMethod() == "INVITE" })
			if err != nil {
				return fmt.Errorf("the phone's 200 OK did not reach the PBX: %w", err)
			}
			got = append(got, fmt.Sprintf("%d tag=%s", m.status(), toTag(m)))
			if m.status() == 200 && toTag(m) == "phone" {
				real = m
				break
			}
		}
		ackTo, err := uriAddr(real.contactURI())
		if err != nil {
			return err
		}
		inDialog := func(method string, cseq int) []byte {
			return buildSIP(method+" "+real.contactURI()+" SIP/2.0", []string{
				"Via: SIP/2.0/UDP 198.18.0.10:5060;branch=z9hG4bKpbx" + method,
				dialog[0], "To: " + real.header("To"), dialog[2], fmt.Sprintf("CSeq: %d %s", cseq, method), "Max-Forwards: 70"}, "")
		}
		l.pbxSIP.send(t, ackTo, inDialog("ACK", 1))
		if _, err := l.phoneSIP.tryRecv(10*time.Second, isRequest("ACK")); err != nil {
			return fmt.Errorf("the PBX's ACK did not reach the phone: %w", err)
		}
		l.pbxSIP.send(t, ackTo, inDialog("BYE", 2))
		bye, err := l.phoneSIP.tryRecv(10*time.Second, isRequest("BYE"))
		if err != nil {
			return fmt.Errorf("the PBX's BYE did not reach the phone: %w", err)
		}
		byeBack, err := bye.viaAddr()
		if err != nil {
			return err
		}
		l.phoneSIP.send(t, byeBack, response(bye, 200, "OK", "", nil, ""))
		if _, err := l.pbxSIP.tryRecv(10*time.Second, isResponse("BYE", 200)); err != nil {
			return fmt.Errorf("the phone's 200 to the BYE did not reach the PBX: %w", err)
		}
		return nil
	}()
	after := l.sipcar.metricsOr(t)
	released, releaseState := poll(5*time.Second, func() (bool, string) {
		m, err := l.sipcar.serverMap()
		if err != nil {
			return false, err.Error()
		}
		return len(m.media()) == 0, m.String()
	})
	forged := 0
	for _, g := range got {
		if strings.HasSuffix(g, "tag=forged") || strings.HasSuffix(g, "tag=otherbranch") {
			forged++
		}
	}
	delta := func(reason string) float64 { return dropped(after, reason) - dropped(before, reason) }

	l.sipcar.figures(t, attack, "after")
	t.Logf("figure %s: INVITE responses at the PBX, in order: %v", attack, got)
	t.Logf("figure %s: forged responses that reached the PBX: %d of 2", attack, forged)
	t.Logf("figure %s: dropped as response-source: %.0f, as unmatched-response: %.0f", attack, delta("response-source"), delta("unmatched-response"))
	t.Logf("figure %s: phone's call: %s", attack, outcome(callErr))
	t.Logf("figure %s: media released after the call's BYE: %v", attack, released)

	if forged != 0 {
		t.Errorf("%d forged responses reached the PBX: %v", forged, got)
	}
	if delta("response-source") < 1 {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="response-source"} did not rise for the attacker's 200 OK`)
	}
	if delta("response-source")+delta("unmatched-response") < 2 {
		t.Errorf("dropped response-source + unmatched-response rose by %.0f; want 2 (both forgeries)", delta("response-source")+delta("unmatched-response"))
	}
	if callErr != nil {
		t.Errorf("the call: %v", callErr)
	} else if !released {
		t.Errorf("media bindings outlive the call (the forged answers' pairs?):\n%s", releaseState)
	}
}

// withTopBranch returns a copy of m whose top Via carries branch instead of its own.
func withTopBranch(m *sipMsg, branch string) *sipMsg {
	c := *m
	c.head = append([]string(nil), m.head...)
	for i, h := range c.head {
		name, _, _ := strings.Cut(h, ":")
		if n := strings.ToLower(strings.TrimSpace(name)); n == "via" || n == "v" {
			c.head[i] = regexp.MustCompile(`branch=[^;,\s]+`).ReplaceAllString(h, "branch="+branch)
			break
		}
	}
	return &c
}

// contactList writes n Contact values at distinct ports of addr from port first on.
func contactList(addr netip.Addr, first, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "<sip:atk@%v>", netip.AddrPortFrom(addr, uint16(first+i)))
	}
	return b.String()
}

// bindingsFor counts the sip bindings that stand for an address of host.
func bindingsFor(m serverMap, host netip.Addr) int {
	n := 0
	for _, e := range m.of("sip") {
		if e.ForwardTo.Addr() == host {
			n++
		}
	}
	return n
}

// TestAttackRegisterContacts registers thousands of Contacts from one source: a REGISTER with
// 2,000 over TCP and one with 1,900 over UDP (about 60 KB each), each refused with 403 and a
// Warning naming the Contacts, no binding made; then 30 REGISTERs of 10 Contacts each from
// the same source, which get bindings up to the per-source cap (200) and 503 with Retry-After
// beyond it. The sip bindings the source holds stay at most 200, and a phone from another
// address registers and calls. sipcar's signalling range is 3,000 ports, so that today's
// unbounded bindings exhaust it.
func TestAttackRegisterContacts(t *testing.T) {
	t.Parallel()
	const attack = "REGISTER with thousands of Contacts"
	l := newAttackLab(t, nil, "SIPCAR_SIP_PORTS=40000-42999")
	l.addPhoneAddr(attackerAddr)
	l.sipcar.figures(t, attack, "before")
	before := l.sipcar.metricsOr(t)

	type big struct {
		name     string
		contacts int
		status   string
		warning  string
		size     int
	}
	bigs := []*big{{name: "TCP", contacts: 2000}, {name: "UDP", contacts: 1900}}
	udp, err := openUDPEndpoint(t, l.phone, netip.AddrPortFrom(attackerAddr, 5060))
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range bigs {
		var ep sipEndpoint = udp
		if b.name == "TCP" {
			c, err := dialTCPEndpoint(t, l.phone, attackerAddr, sipcarListen)
			if err != nil {
				t.Fatalf("TCP connection to sipcar: %v", err)
			}
			ep = c
		}
		contacts := contactList(attackerAddr, 10000+i*b.contacts, b.contacts)
		b.size = len(contacts)
		start := time.Now()
		resp, err := register(ep, "atk", "atk-reg-"+b.name, contacts, 60*time.Second)
		if err != nil {
			b.status = err.Error()
		} else {
			b.status, b.warning = resp.start, resp.header("Warning")
		}
		t.Logf("REGISTER with %d Contacts (%d bytes of Contacts) over %s: %s (Warning %q) after %v",
			b.contacts, b.size, b.name, b.status, b.warning, time.Since(start).Round(time.Millisecond))
	}
	bigMap, _ := l.sipcar.serverMap()
	afterBig := l.sipcar.figures(t, attack, "after the REGISTERs with 2,000 and 1,900 Contacts")

	// Many REGISTERs under the Contact cap, from the same source.
	codes := make(map[int]int)
	var first10 []string
	retryAfter := ""
	for i := range 30 {
		time.Sleep(replyPace) // see replyPace
		resp, err := register(udp, "atk", fmt.Sprintf("atk-small-%d", i), contactList(attackerAddr, 30000+10*i, 10), 10*time.Second)
		status := 0
		if err == nil {
			status = resp.status()
			if status == 503 && retryAfter == "" {
				retryAfter = resp.header("Retry-After")
			}
		}
		codes[status]++
		if i < 10 {
			first10 = append(first10, strconv.Itoa(status))
		}
	}
	smallMap, _ := l.sipcar.serverMap()
	l.sipcar.figures(t, attack, "after 30 REGISTERs of 10 Contacts")

	// A phone from another address registers and calls.
	phone, err := openUDPEndpoint(t, l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	if err != nil {
		t.Fatal(err)
	}
	phoneReg := "no answer"
	if resp, err := register(phone, "alice", "alice-reg", "", 10*time.Second); err == nil {
		phoneReg = resp.start
	} else {
		phoneReg = err.Error()
	}
	callErr := placeCall(phone, "alice-call", 15*time.Second)
	after := l.sipcar.metricsOr(t)
	delta := func(reason string) float64 { return dropped(after, reason) - dropped(before, reason) }
	l.sipcar.figures(t, attack, "after the phone's call")
	t.Logf("figure %s: sip bindings standing for the attacker after the big REGISTERs: %d, after the small ones: %d",
		attack, bindingsFor(bigMap, attackerAddr), bindingsFor(smallMap, attackerAddr))
	t.Logf("figure %s: answers to 30 REGISTERs of 10 Contacts: %v (0: none), the first 10: %v, Retry-After of the first 503: %q",
		attack, codes, first10, retryAfter)
	t.Logf("figure %s: REGISTERs with thousands of Contacts that reached the PBX: %d", attack, l.srv.seen("atk-reg-TCP")+l.srv.seen("atk-reg-UDP"))
	t.Logf("figure %s: dropped as too-many-contacts: %.0f, as binding-limit: %.0f", attack, delta("too-many-contacts"), delta("binding-limit"))
	t.Logf("figure %s: phone's REGISTER: %s; phone's call: %s", attack, phoneReg, outcome(callErr))

	for _, b := range bigs {
		if !strings.HasPrefix(b.status, "SIP/2.0 403 ") {
			t.Errorf("REGISTER with %d Contacts over %s answered %q; want 403 Forbidden", b.contacts, b.name, b.status)
		}
		if !strings.Contains(strings.ToLower(b.warning), "contact") {
			t.Errorf("REGISTER with %d Contacts over %s: Warning %q does not name the Contacts", b.contacts, b.name, b.warning)
		}
	}
	if n := bindingsFor(bigMap, attackerAddr); n > 2 {
		t.Errorf("the refused REGISTERs left %d sip bindings standing for the attacker; want none for their Contacts (%d signalling ports in use)", n, afterBig.sipBindings)
	}
	if n := l.srv.seen("atk-reg-TCP") + l.srv.seen("atk-reg-UDP"); n != 0 {
		t.Errorf("%d REGISTERs with thousands of Contacts reached the PBX", n)
	}
	if delta("too-many-contacts") < 2 {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="too-many-contacts"} rose by %.0f; want 2`, delta("too-many-contacts"))
	}
	for i, c := range first10 {
		if c != "200" {
			t.Errorf("small REGISTER %d (10 Contacts, %d bindings so far, under the cap of 200) answered %s; want 200", i, 10*i, c)
			break
		}
	}
	if codes[503] == 0 {
		t.Errorf("no REGISTER was refused with 503 at the per-source cap (answers %v)", codes)
	} else if n, err := strconv.Atoi(retryAfter); err != nil || n <= 0 {
		t.Errorf("503 at the per-source cap: Retry-After %q; want a number of seconds", retryAfter)
	}
	if n := bindingsFor(smallMap, attackerAddr); n > 200 {
		t.Errorf("the attacker holds %d sip bindings; want at most 200 (SIPCAR_MAX_BINDINGS_PER_SOURCE)", n)
	}
	if delta("binding-limit") < 1 {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="binding-limit"} did not rise`)
	}
	if !strings.HasPrefix(phoneReg, "SIP/2.0 200 ") {
		t.Errorf("the phone's REGISTER: %s; want 200", phoneReg)
	}
	if callErr != nil {
		t.Errorf("the phone's call: %v", callErr)
	}
}

// TestAttackMediaStreams takes relay ports with SDP: INVITEs with dozens of m= lines, INVITEs
// with 8 streams each up to the per-source port cap, an INVITE whose next hop never answers, and
// a call that rings; see each subtest.
func TestAttackMediaStreams(t *testing.T) {
	t.Run("streams-and-port-cap", func(t *testing.T) {
		t.Parallel()
		testAttackStreamsPortCap(t)
	})
	t.Run("timer-b-releases", func(t *testing.T) {
		t.Parallel()
		testAttackTimerB(t)
	})
	t.Run("ringing-lifetime", func(t *testing.T) {
		t.Parallel()
		testAttackRingingLifetime(t)
	})
}

// testAttackStreamsPortCap: one source sends 10 INVITEs with 40 m= lines each (488, nothing
// allocated, nothing reaches the PBX), then 60 INVITEs with 8 streams each and 10 with one that
// the PBX leaves ringing: calls get ports until the source holds 1,000
// (SIPCAR_MAX_PORTS_PER_SOURCE), beyond that 503 with Retry-After. The relay range is 3,000 ports, so that today's per-call cap lets
// the source take them all; a phone from another address then calls.
func testAttackStreamsPortCap(t *testing.T) {
	const attack = "INVITEs with dozens of m= lines"
	l := newAttackLab(t, func(m *sipMsg) pbxAction {
		if strings.HasPrefix(m.header("Call-ID"), "atk-") {
			return pbxRing
		}
		return pbxAnswer
	}, "SIPCAR_RTP_PORTS=20000-22999")
	l.addPhoneAddr(attackerAddr)
	atk, err := openUDPEndpoint(t, l.phone, netip.AddrPortFrom(attackerAddr, 5060))
	if err != nil {
		t.Fatal(err)
	}
	l.sipcar.figures(t, attack, "before")
	before := l.sipcar.metricsOr(t)

	manyCodes := make(map[int]int)
	for i := range 10 {
		id := fmt.Sprintf("atk-many-%d", i)
		time.Sleep(replyPace) // see replyPace
		if err := atk.send(sipcarListen, invite(atk, id, 40)); err != nil {
			t.Fatal(err)
		}
		resp, err := firstAnswer(atk, id, 10*time.Second)
		if err != nil {
			manyCodes[0]++
			continue
		}
		manyCodes[resp.status()]++
		if resp.status() >= 300 {
			ackFinal(atk, resp)
		}
	}
	afterMany := l.sipcar.figures(t, attack, "after 10 INVITEs with 40 m= lines")

	capCodes := make(map[int]int)
	retryAfter := ""
	for i := range 60 {
		id := fmt.Sprintf("atk-eight-%d", i)
		time.Sleep(replyPace) // see replyPace
		if err := atk.send(sipcarListen, invite(atk, id, 8)); err != nil {
			t.Fatal(err)
		}
		resp, err := firstAnswer(atk, id, 10*time.Second)
		if err != nil {
			capCodes[0]++
			continue
		}
		capCodes[resp.status()]++
		if resp.status() == 503 && retryAfter == "" {
			retryAfter = resp.header("Retry-After")
		}
		if resp.status() >= 300 {
			ackFinal(atk, resp)
		}
	}
	// Then calls of one stream, which fit where one of 8 no longer does.
	oneCodes := make(map[int]int)
	for i := range 10 {
		id := fmt.Sprintf("atk-one-%d", i)
		time.Sleep(replyPace) // see replyPace
		if err := atk.send(sipcarListen, invite(atk, id, 1)); err != nil {
			t.Fatal(err)
		}
		resp, err := firstAnswer(atk, id, 10*time.Second)
		if err != nil {
			oneCodes[0]++
			continue
		}
		oneCodes[resp.status()]++
		if resp.status() >= 300 {
			ackFinal(atk, resp)
		}
	}
	afterCap := l.sipcar.figures(t, attack, "after 60 INVITEs with 8 streams and 10 with 1")
	callErr := l.phoneCall(netip.AddrPortFrom(phoneAddr, 5072), "phone-after-streams")
	after := l.sipcar.metricsOr(t)
	delta := func(reason string) float64 { return dropped(after, reason) - dropped(before, reason) }
	l.sipcar.figures(t, attack, "after the phone's call")
	t.Logf("figure %s: answers to 10 INVITEs with 40 m= lines: %v (0: none); messages of them at the PBX: %d",
		attack, manyCodes, l.srv.seenPrefix("atk-many-"))
	t.Logf("figure %s: answers to 60 INVITEs with 8 streams: %v (0: none), Retry-After of the first 503: %q", attack, capCodes, retryAfter)
	t.Logf("figure %s: answers to 10 INVITEs with 1 stream after them: %v", attack, oneCodes)
	t.Logf("figure %s: dropped as too-many-streams: %.0f, as port-limit: %.0f", attack, delta("too-many-streams"), delta("port-limit"))
	t.Logf("figure %s: phone's call: %s", attack, outcome(callErr))

	if manyCodes[488] != 10 {
		t.Errorf("INVITEs with 40 m= lines answered %v; want 10 times 488 Not Acceptable Here", manyCodes)
	}
	if afterMany.mediaPorts != 0 {
		t.Errorf("the INVITEs with 40 m= lines left %d relay ports in use; want 0", afterMany.mediaPorts)
	}
	if n := l.srv.seenPrefix("atk-many-"); n != 0 {
		t.Errorf("%d messages of the INVITEs with 40 m= lines reached the PBX", n)
	}
	if delta("too-many-streams") < 10 {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="too-many-streams"} rose by %.0f; want 10`, delta("too-many-streams"))
	}
	if capCodes[180] == 0 {
		t.Errorf("none of the INVITEs with 8 streams rang (answers %v): calls under the port cap must go through", capCodes)
	}
	if afterCap.mediaPorts > 1000 {
		t.Errorf("one source holds %d relay ports; want at most 1000 (SIPCAR_MAX_PORTS_PER_SOURCE)", afterCap.mediaPorts)
	}
	if codes := capCodes[503]; codes == 0 {
		t.Errorf("no INVITE was refused with 503 at the per-source port cap (answers %v)", capCodes)
	} else if n, err := strconv.Atoi(retryAfter); err != nil || n <= 0 {
		t.Errorf("503 at the port cap: Retry-After %q; want a number of seconds", retryAfter)
	}
	if delta("port-limit") < 1 {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="port-limit"} did not rise`)
	}
	if callErr != nil {
		t.Errorf("the phone's call: %v", callErr)
	}
}

// replyPace spaces an attacker's requests that sipcar refuses one by one: under the cap of its
// own error replies to one source (SIPCAR_MAX_ERROR_REPLY_RATE, 10/s), so that each refusal
// is answered rather than suppressed.
const replyPace = 150 * time.Millisecond

// callMedia returns the media bindings of a call.
func callMedia(m serverMap, callID string) []entry {
	var es []entry
	for _, e := range m.media() {
		if e.CallID == callID {
			es = append(es, e)
		}
	}
	return es
}

// testAttackTimerB: the PBX drops an INVITE. With SIPCAR_TRANSACTION_TIMEOUT=3s the phone gets
// sipcar's 503 after it (well before Timer B's default 32 s), and the call's media pairs are
// gone from the server map as soon as the 503 is out.
func testAttackTimerB(t *testing.T) {
	const attack = "INVITE never answered (Timer B)"
	const callID = "timerb-1"
	l := newAttackLab(t, func(m *sipMsg) pbxAction {
		if m.header("Call-ID") == callID {
			return pbxDrop
		}
		return pbxAnswer
	}, "SIPCAR_TRANSACTION_TIMEOUT=3s")
	ep, err := openUDPEndpoint(t, l.phone, netip.AddrPortFrom(phoneAddr, 5072))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := ep.send(sipcarListen, invite(ep, callID, 1)); err != nil {
		t.Fatal(err)
	}
	poll(10*time.Second, func() (bool, string) { return l.srv.seen(callID) > 0, "" })
	held, _ := l.sipcar.serverMap()
	resp, respErr := ep.next(45*time.Second, func(m *sipMsg) bool {
		return isResponse("INVITE", 0)(m) && m.header("Call-ID") == callID
	})
	took := time.Since(start)
	m, mapErr := l.sipcar.serverMap() // right after the 503
	if respErr == nil {
		ackFinal(ep, resp)
	}
	left := callMedia(m, callID)
	l.sipcar.figures(t, attack, "right after the 503")
	status := "none within 45 s"
	if respErr == nil {
		status = fmt.Sprintf("%s (Warning %q)", resp.start, resp.header("Warning"))
	}
	t.Logf("figure %s: media bindings of the call while it waited: %d", attack, len(callMedia(held, callID)))
	t.Logf("figure %s: final answer %s after %v", attack, status, took.Round(100*time.Millisecond))
	t.Logf("figure %s: media bindings of the call right after the answer: %d", attack, len(left))
	for _, e := range left {
		t.Logf("  %v", e)
	}
	callErr := l.phoneCall(netip.AddrPortFrom(phoneAddr, 5074), "after-timerb")
	t.Logf("figure %s: phone's next call: %s", attack, outcome(callErr))

	if respErr != nil {
		t.Fatalf("no final answer to an INVITE the PBX dropped within 45 s: %v", respErr)
	}
	if mapErr != nil {
		t.Fatal(mapErr)
	}
	if resp.status() != 503 {
		t.Errorf("INVITE the PBX dropped answered %q; want sipcar's 503", resp.start)
	}
	if took > 20*time.Second {
		t.Errorf("sipcar's 503 came after %v; want it after SIPCAR_TRANSACTION_TIMEOUT=3s (allowing up to 20 s on a loaded machine), not Timer B's 32 s",
			took.Round(100*time.Millisecond))
	}
	if len(left) != 0 {
		t.Errorf("%d media bindings of the failed call remain right after sipcar's 503; want its pairs released at once", len(left))
	}
	if callErr != nil {
		t.Errorf("the phone's next call: %v", callErr)
	}
}

// testAttackRingingLifetime: while a call rings (180, no final answer), the Left-Time of its
// media bindings in the server map counts down between two reads four seconds apart.
func testAttackRingingLifetime(t *testing.T) {
	const attack = "ringing call's lifetimes"
	const callID = "ring-1"
	l := newAttackLab(t, func(m *sipMsg) pbxAction {
		if m.header("Call-ID") == callID {
			return pbxRing
		}
		return pbxAnswer
	})
	ep, err := openUDPEndpoint(t, l.phone, netip.AddrPortFrom(phoneAddr, 5072))
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.send(sipcarListen, invite(ep, callID, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := ep.next(10*time.Second, func(m *sipMsg) bool { return m.status() == 180 && m.header("Call-ID") == callID }); err != nil {
		t.Fatalf("no 180 Ringing at the phone: %v", err)
	}
	first := callMedia(l.sipcar.mustServerMap(t), callID)
	time.Sleep(4 * time.Second) // two reads of the display a few seconds apart
	second := callMedia(l.sipcar.mustServerMap(t), callID)
	l.sipcar.figures(t, attack, "ringing")
	lefts := func(es []entry) []string {
		var s []string
		for _, e := range es {
			if e.LeftSeconds == nil {
				s = append(s, e.Address.String()+"=never")
			} else {
				s = append(s, fmt.Sprintf("%v=%ds", e.Address, *e.LeftSeconds))
			}
		}
		return s
	}
	t.Logf("figure %s: left_seconds of the media bindings at the first read: %v", attack, lefts(first))
	t.Logf("figure %s: left_seconds 4 s later: %v", attack, lefts(second))

	// End the call: CANCEL, 487, ACK.
	_ = ep.send(sipcarListen, buildSIP("CANCEL sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/UDP " + ep.local().String() + ";branch=z9hG4bK" + callID, "From: <sip:caller@198.51.100.1>;tag=" + callID,
		"To: <sip:pbx@198.51.100.1>", "Call-ID: " + callID, "CSeq: 1 CANCEL", "Max-Forwards: 70"}, ""))
	if resp, err := ep.next(10*time.Second, isResponse("INVITE", 487)); err == nil {
		ackFinal(ep, resp)
	} else {
		t.Logf("no 487 after CANCEL: %v", err)
	}

	if len(first) == 0 {
		t.Fatal("the ringing call has no media binding in the server map")
	}
	for _, a := range first {
		var b *entry
		for i := range second {
			if second[i].Address == a.Address && second[i].Type == a.Type {
				b = &second[i]
			}
		}
		switch {
		case b == nil:
			t.Errorf("binding %v of the ringing call vanished between the reads", a)
		case a.LeftSeconds == nil || b.LeftSeconds == nil:
			t.Errorf("binding %v of the ringing call shows no lifetime (%v, then %v)", a.Address, a.LeftSeconds, b.LeftSeconds)
		case *b.LeftSeconds >= *a.LeftSeconds:
			t.Errorf("binding %v of the ringing call: left_seconds %d, then %d four seconds later; want it counting down",
				a.Address, *a.LeftSeconds, *b.LeftSeconds)
		}
	}
}

// TestAttackSlowloris holds TCP and TLS connections open: see each subtest.
func TestAttackSlowloris(t *testing.T) {
	t.Run("trickle-and-half-open", func(t *testing.T) {
		t.Parallel()
		testAttackSlowloris(t)
	})
	t.Run("total-cap", func(t *testing.T) {
		t.Parallel()
		testAttackConnectionTotal(t)
	})
}

// Where the slowloris connections come from: eight addresses of TCP, five of TLS.
func slowlorisSources(first, n int) []netip.Addr {
	var as []netip.Addr
	for i := range n {
		as = append(as, netip.AddrFrom4([4]byte{198, 51, 100, byte(first + i)}))
	}
	return as
}

// testAttackSlowloris: 2,000 TCP connections from eight addresses (250 each) and 400 TLS
// connections from five (80 each) that never send a ClientHello. With the default per-source
// cap (64) sipcar closes what is beyond it at once; the TCP connections then trickle a request
// one byte a second and the TLS ones stay silent, and sipcar closes them after
// SIPCAR_MESSAGE_TIMEOUT and SIPCAR_TLS_HANDSHAKE_TIMEOUT (3 s each here). Meanwhile its open
// descriptors stay bounded, /readyz answers, and a phone completes a call over UDP and one over
// TCP.
func testAttackSlowloris(t *testing.T) {
	const attack = "slowloris"
	const (
		tcpPerSource = 250
		tlsPerSource = 80
		perSourceCap = 64
	)
	tcpSrcs, tlsSrcs := slowlorisSources(100, 8), slowlorisSources(110, 5)
	raiseNoFile(t, 8000)
	certFile, keyFile, _ := writeCertificate(t, t.TempDir(), publicAddr)
	l := newAttackLab(t, nil, "SIPCAR_LISTEN_TLS=:5061", "SIPCAR_TLS_CERT="+certFile, "SIPCAR_TLS_KEY="+keyFile,
		"SIPCAR_MESSAGE_TIMEOUT=3s", "SIPCAR_TLS_HANDSHAKE_TIMEOUT=3s")
	for _, a := range append(append([]netip.Addr(nil), tcpSrcs...), tlsSrcs...) {
		l.addPhoneAddr(a)
	}
	base := l.sipcar.figures(t, attack, "before")
	before := l.sipcar.metricsOr(t)

	opening := time.Now()
	tcpCrowd := l.openCrowd(l.phone, tcpSrcs, tcpPerSource, sipcarListen)
	tlsCrowd := l.openCrowd(l.phone, tlsSrcs, tlsPerSource, netip.AddrPortFrom(publicAddr, 5061))
	t.Logf("opened %d TCP connections (%d failed: %v) and %d TLS connections (%d failed: %v) in %v",
		len(tcpCrowd.conns), tcpCrowd.dialFailed, tcpCrowd.firstErr, len(tlsCrowd.conns), tlsCrowd.dialFailed, tlsCrowd.firstErr,
		time.Since(opening).Round(time.Millisecond))
	capsHeld, capState := poll(15*time.Second, func() (bool, string) {
		tcpAlive, tcpBy := tcpCrowd.alive()
		tlsAlive, tlsBy := tlsCrowd.alive()
		return maxPerSource(tcpBy) <= perSourceCap && maxPerSource(tlsBy) <= perSourceCap,
			fmt.Sprintf("open: %d TCP (at most %d from one source), %d TLS (at most %d from one source)",
				tcpAlive, maxPerSource(tcpBy), tlsAlive, maxPerSource(tlsBy))
	})
	during := l.sipcar.figures(t, attack, "connections open")
	ready, readyErr := l.sipcar.readyStatus()
	udpCall := l.phoneCall(netip.AddrPortFrom(phoneAddr, 5072), "slowloris-udp")
	tcpCall := l.phoneCallTCP(phoneAddr, "slowloris-tcp")

	stop := make(chan struct{})
	var trickled atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tcpCrowd.trickle(stop, buildSIP("OPTIONS sip:pbx@198.51.100.1 SIP/2.0", []string{
			"Via: SIP/2.0/TCP 198.51.100.100:1;branch=z9hG4bKslowloris", "From: <sip:slow@198.51.100.1>;tag=slow",
			"To: <sip:pbx@198.51.100.1>", "Call-ID: slowloris", "CSeq: 1 OPTIONS", "Max-Forwards: 70",
		}, ""), &trickled)
	}()
	stopTrickle := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopTrickle)
	timeoutsHeld, timeoutState := poll(25*time.Second, func() (bool, string) {
		tcpAlive, _ := tcpCrowd.alive()
		tlsAlive, _ := tlsCrowd.alive()
		return tcpAlive == 0 && tlsAlive == 0, fmt.Sprintf("open: %d trickling TCP, %d half-open TLS; %d bytes trickled",
			tcpAlive, tlsAlive, trickled.Load())
	})
	stopTrickle()
	trickling := l.sipcar.figures(t, attack, "after trickling")
	readyAfter, _ := l.sipcar.readyStatus()
	after := l.sipcar.metricsOr(t)
	conn := func(name, reason string) float64 {
		return sumMetric(after, "sipcar_sip_connections_"+name+"_total", `reason="`+reason+`"`) -
			sumMetric(before, "sipcar_sip_connections_"+name+"_total", `reason="`+reason+`"`)
	}
	t.Logf("figure %s: per-source caps: %v (%s)", attack, capsHeld, capState)
	t.Logf("figure %s: timeouts: %v (%s)", attack, timeoutsHeld, timeoutState)
	t.Logf("figure %s: /readyz under attack: %d %v; after: %d", attack, ready, readyErr, readyAfter)
	t.Logf("figure %s: connections refused per-source %.0f, total %.0f; closed handshake-timeout %.0f, message-timeout %.0f",
		attack, conn("refused", "per-source"), conn("refused", "total"), conn("closed", "handshake-timeout"), conn("closed", "message-timeout"))
	t.Logf("figure %s: phone's call over UDP: %s", attack, outcome(udpCall))
	t.Logf("figure %s: phone's call over TCP: %s", attack, outcome(tcpCall))

	if !capsHeld {
		t.Errorf("connections beyond %d per source were not closed within 15 s: %s", perSourceCap, capState)
	}
	bound := base.fds + float64(perSourceCap*(len(tcpSrcs)+len(tlsSrcs))) + 100
	if during.fds > bound {
		t.Errorf("sipcar holds %.0f descriptors under the attack (%.0f before); want at most %.0f (the per-source caps and a margin)",
			during.fds, base.fds, bound)
	}
	if ready != http.StatusOK || readyErr != nil {
		t.Errorf("/readyz under the attack: %d %v; want 200", ready, readyErr)
	}
	if udpCall != nil {
		t.Errorf("the phone's call over UDP under the attack: %v", udpCall)
	}
	if tcpCall != nil {
		t.Errorf("the phone's call over TCP under the attack: %v", tcpCall)
	}
	if !timeoutsHeld {
		t.Errorf("trickling and half-open connections not closed within 25 s of 3 s timeouts: %s", timeoutState)
	}
	if trickling.fds > base.fds+100 {
		t.Errorf("sipcar holds %.0f descriptors after the timeouts (%.0f before the attack)", trickling.fds, base.fds)
	}
	wantRefused := float64(len(tcpSrcs)*(tcpPerSource-perSourceCap) + len(tlsSrcs)*(tlsPerSource-perSourceCap))
	if got := conn("refused", "per-source"); got < wantRefused {
		t.Errorf(`sipcar_sip_connections_refused_total{reason="per-source"} rose by %.0f; want at least %.0f`, got, wantRefused)
	}
	if conn("closed", "message-timeout") < 1 {
		t.Errorf(`sipcar_sip_connections_closed_total{reason="message-timeout"} did not rise`)
	}
	if conn("closed", "handshake-timeout") < 1 {
		t.Errorf(`sipcar_sip_connections_closed_total{reason="handshake-timeout"} did not rise`)
	}
}

// testAttackConnectionTotal: with SIPCAR_MAX_CONNECTIONS=40, 90 idle TCP connections from three
// addresses (each under the per-source cap): sipcar keeps at most 40, closes the rest at once
// and counts them as "total"; /readyz answers and a phone calls over UDP.
func testAttackConnectionTotal(t *testing.T) {
	const attack = "connections over the total cap"
	const total = 40
	srcs := slowlorisSources(120, 3)
	l := newAttackLab(t, nil, fmt.Sprintf("SIPCAR_MAX_CONNECTIONS=%d", total))
	for _, a := range srcs {
		l.addPhoneAddr(a)
	}
	before := l.sipcar.metricsOr(t)
	cr := l.openCrowd(l.phone, srcs, 30, sipcarListen)
	held, state := poll(15*time.Second, func() (bool, string) {
		n, by := cr.alive()
		return n <= total, fmt.Sprintf("%d open (%v)", n, by)
	})
	l.sipcar.figures(t, attack, "connections open")
	ready, readyErr := l.sipcar.readyStatus()
	callErr := l.phoneCall(netip.AddrPortFrom(phoneAddr, 5072), "total-cap-udp")
	after := l.sipcar.metricsOr(t)
	refused := sumMetric(after, "sipcar_sip_connections_refused_total", `reason="total"`) -
		sumMetric(before, "sipcar_sip_connections_refused_total", `reason="total"`)
	t.Logf("figure %s: %d connections made; cap held: %v (%s); refused as total: %.0f", attack, len(cr.conns), held, state, refused)
	t.Logf("figure %s: /readyz: %d %v; phone's call over UDP: %s", attack, ready, readyErr, outcome(callErr))

	if !held {
		t.Errorf("more than %d connections stayed open: %s", total, state)
	}
	if want := float64(len(cr.conns) - total); refused < want {
		t.Errorf(`sipcar_sip_connections_refused_total{reason="total"} rose by %.0f; want at least %.0f`, refused, want)
	}
	if ready != http.StatusOK || readyErr != nil {
		t.Errorf("/readyz: %d %v; want 200", ready, readyErr)
	}
	if callErr != nil {
		t.Errorf("the phone's call over UDP: %v", callErr)
	}
}

// garbage is a small request sipcar refuses (an impossible Via address) in compact form, of the
// same length for every n: its answer, a 400 with full header names and a Warning, would be
// larger.
func garbage(n int) []byte {
	id := fmt.Sprintf("g%07d", n)
	return []byte("OPTIONS sip:a@198.51.100.1 SIP/2.0\r\nv: SIP/2.0/UDP 203.0.113.300;branch=z9hG4bK" + id +
		"\r\nf: <sip:a@b>;tag=1\r\nt: <sip:b@b>\r\ni: " + id + "\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n")
}

// settled waits until count stops changing for a second (at most 15 s) and returns it.
func settled(count func() int64) int64 {
	last, since := count(), time.Now()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		if n := count(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) >= time.Second {
			break
		}
	}
	return last
}

// TestAttackGarbageFlood floods sipcar with small malformed requests, whose 400 answers would
// be larger than they are, from spoofable UDP sources in 203.0.113.0/24. First one source sends
// 200 of them at once: its error replies are capped (SIPCAR_MAX_ERROR_REPLY_RATE, 10/s) and
// none is larger than the request. Then 250 sources of the /24 send 16 each (4,000 in all,
// each source far under its own limit): the per-prefix limit (SIPCAR_MAX_PREFIX_RATE=200/s
// here) drops all but a prefix's allowance as "prefix-flood", no reply is larger than its
// request, and a phone in another prefix completes a call during the flood. Allowances assume a
// burst of twice the rate, like the per-address limit's, plus the rate for the time the sending
// took, rounded up, and one second more.
func TestAttackGarbageFlood(t *testing.T) {
	t.Parallel()
	const attack = "garbage flood from a /24"
	const (
		perAddress = 100 // SIPCAR_MAX_MESSAGE_RATE
		perPrefix  = 200 // SIPCAR_MAX_PREFIX_RATE
		replyRate  = 10  // SIPCAR_MAX_ERROR_REPLY_RATE (the default)
		sources    = 250
		rounds     = 16
	)
	l := newAttackLab(t, nil, fmt.Sprintf("SIPCAR_MAX_MESSAGE_RATE=%d", perAddress), fmt.Sprintf("SIPCAR_MAX_PREFIX_RATE=%d", perPrefix))
	// The phone's namespace owns the whole of 203.0.113.0/24; sipcar reaches it through the phone.
	if err := ipCmd("-n", l.phone.name, "route", "add", "local", "203.0.113.0/24", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	if err := ipCmd("-n", l.car.name, "route", "add", "203.0.113.0/24", "via", phoneAddr.String()); err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for i := range sources + 1 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + i)}))
	}
	srcs := l.udpSources(l.phone, addrs)
	single, flood := srcs[sources], srcs[:sources]
	reqSize := int64(len(garbage(0)))
	l.sipcar.figures(t, attack, "before")
	malformed := func(ms map[string]float64) float64 { return sumMetric(ms, "sipcar_sip_messages_malformed_total") }

	// One source, 200 requests at once.
	ms0 := l.sipcar.metricsOr(t)
	start := time.Now()
	for i := range 200 {
		_, _ = single.conn.WriteToUDPAddrPort(garbage(i), sipcarListen)
	}
	sendA := time.Since(start)
	repliesA := settled(single.replies.Load)
	ms1 := l.sipcar.metricsOr(t)
	deltaA := func(reason string) float64 { return dropped(ms1, reason) - dropped(ms0, reason) }
	// Replies can only go out while requests arrive: the sending time, rounded up, and a second.
	allowedA := 2*replyRate + replyRate*int64(math.Ceil(sendA.Seconds())+1)

	time.Sleep(2 * time.Second) // the buckets refill
	ms2 := l.sipcar.metricsOr(t)
	callErr := make(chan error, 1)
	start = time.Now()
	for r := range rounds {
		if r == 4 {
			go func() { callErr <- l.phoneCall(netip.AddrPortFrom(phoneAddr, 5072), "during-flood") }()
		}
		for i, s := range flood {
			_, _ = s.conn.WriteToUDPAddrPort(garbage(1000+r*sources+i), sipcarListen)
		}
		time.Sleep(50 * time.Millisecond) // rounds, so that the socket buffers hold each
	}
	sendB := time.Since(start)
	var phoneErr error
	select {
	case phoneErr = <-callErr:
	case <-time.After(40 * time.Second):
		phoneErr = fmt.Errorf("the call did not end within 40 s")
	}
	var repliesB, largestB int64
	repliesB = settled(func() int64 {
		var n int64
		for _, s := range flood {
			n += s.replies.Load()
		}
		return n
	})
	for _, s := range flood {
		largestB = max(largestB, s.largest.Load())
	}
	ms3 := l.sipcar.metricsOr(t)
	deltaB := func(reason string) float64 { return dropped(ms3, reason) - dropped(ms2, reason) }
	processedB := malformed(ms3) - malformed(ms2)
	allowedB := float64(2*perPrefix) + perPrefix*(math.Ceil(sendB.Seconds())+1)
	sentB := sources * rounds

	l.sipcar.figures(t, attack, "after")
	t.Logf("figure %s: one source, 200 requests of %d bytes in %v: %d replies (largest %d bytes), %.0f processed; dropped reply-limit %.0f, reply-size %.0f",
		attack, reqSize, sendA.Round(time.Millisecond), repliesA, single.largest.Load(), malformed(ms1)-malformed(ms0), deltaA("reply-limit"), deltaA("reply-size"))
	t.Logf("figure %s: %d sources of 203.0.113.0/24, %d requests in %v: %.0f processed (allowance %.0f), %d replies of %d bytes in all (largest %d bytes, request %d)",
		attack, sources, sentB, sendB.Round(time.Millisecond), processedB, allowedB, repliesB, sumReplyBytes(flood), largestB, reqSize)
	t.Logf("figure %s: dropped prefix-flood %.0f, flood %.0f, reply-limit %.0f, reply-size %.0f",
		attack, deltaB("prefix-flood"), deltaB("flood"), deltaB("reply-limit"), deltaB("reply-size"))
	t.Logf("figure %s: phone's call during the flood: %s", attack, outcome(phoneErr))

	if repliesA > allowedA {
		t.Errorf("one source got %d error replies to 200 requests sent in %v; want at most %d (%d/s)", repliesA, sendA, allowedA, replyRate)
	}
	if n := single.largest.Load(); n > reqSize {
		t.Errorf("an error reply of %d bytes answered a %d-byte request from an unknown UDP source", n, reqSize)
	}
	if deltaA("reply-limit")+deltaA("reply-size") < 1 {
		t.Errorf(`no suppressed error reply counted (sipcar_sip_messages_dropped_total{reason="reply-limit"|"reply-size"})`)
	}
	if deltaB("prefix-flood") < 1 {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="prefix-flood"} did not rise during a flood of %d requests from one /24`, sentB)
	}
	if processedB > allowedB {
		t.Errorf("sipcar processed %.0f of %d requests from one /24 sent in %v; want at most %.0f (%d/s per prefix)",
			processedB, sentB, sendB.Round(time.Millisecond), allowedB, perPrefix)
	}
	if largestB > reqSize {
		t.Errorf("an error reply of %d bytes answered a %d-byte request during the flood", largestB, reqSize)
	}
	if phoneErr != nil {
		t.Errorf("the phone's call during the flood: %v", phoneErr)
	}
}

func sumReplyBytes(srcs []*udpSource) int64 {
	var n int64
	for _, s := range srcs {
		n += s.replyBytes.Load()
	}
	return n
}

// TestAttackSmallerPoints checks the smaller points on one sipcar: a malformed
// Content-Length on TCP is answered 400 before the connection closes; the TLS listener
// refuses a client that offers only CBC suites and serves one offering AEAD suites; the admin
// endpoint has no /debug/pprof/ unless asked. A phone then calls.
func TestAttackSmallerPoints(t *testing.T) {
	t.Parallel()
	const attack = "smaller points"
	certFile, keyFile, roots := writeCertificate(t, t.TempDir(), publicAddr)
	l := newAttackLab(t, nil, "SIPCAR_LISTEN_TLS=:5061", "SIPCAR_TLS_CERT="+certFile, "SIPCAR_TLS_KEY="+keyFile)

	t.Run("tcp-bad-content-length", func(t *testing.T) {
		ep, err := dialTCPEndpoint(t, l.phone, phoneAddr, sipcarListen)
		if err != nil {
			t.Fatal(err)
		}
		msg := "OPTIONS sip:pbx@198.51.100.1 SIP/2.0\r\nVia: SIP/2.0/TCP " + ep.local().String() + ";branch=z9hG4bKbadlength\r\n" +
			"From: <sip:phone@198.51.100.1>;tag=badlength\r\nTo: <sip:pbx@198.51.100.1>\r\nCall-ID: bad-length\r\n" +
			"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: abc\r\n\r\n"
		if err := ep.send(sipcarListen, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		resp, respErr := ep.next(5*time.Second, nil)
		_, closeErr := ep.next(5*time.Second, nil)
		closed := closeErr != nil && closeErr != errNothing
		answer := fmt.Sprint(respErr)
		if respErr == nil {
			answer = resp.start
		}
		t.Logf("figure %s: TCP request with Content-Length abc: answer %s; then the connection closed: %v (%v)", attack, answer, closed, closeErr)
		if respErr != nil || resp.status() != 400 {
			t.Errorf("a request with Content-Length abc on TCP: %s; want 400 Bad Request before the connection closes", answer)
		}
		if !closed {
			t.Errorf("the connection stayed open after a malformed Content-Length (%v); want it closed after the 400", closeErr)
		}
	})

	t.Run("tls-no-cbc", func(t *testing.T) {
		handshake := func(suites []uint16) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			raw, err := l.phone.dialContext(ctx, "tcp", netip.AddrPortFrom(publicAddr, 5061).String())
			if err != nil {
				return "", err
			}
			defer raw.Close()
			tc := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: publicAddr.String(), MinVersion: tls.VersionTLS12,
				MaxVersion: tls.VersionTLS12, CipherSuites: suites})
			if err := tc.HandshakeContext(ctx); err != nil {
				return "", err
			}
			return tls.CipherSuiteName(tc.ConnectionState().CipherSuite), nil
		}
		cbc, cbcErr := handshake([]uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA})
		aead, aeadErr := handshake([]uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256})
		t.Logf("figure %s: TLS 1.2 client offering only CBC suites: negotiated %q, error %v", attack, cbc, cbcErr)
		t.Logf("figure %s: TLS 1.2 client offering only AEAD suites: negotiated %q, error %v", attack, aead, aeadErr)
		if cbcErr == nil {
			t.Errorf("a TLS 1.2 client offering only CBC suites got %s; want the handshake refused", cbc)
		}
		if aeadErr != nil {
			t.Errorf("a TLS 1.2 client offering AEAD suites: %v; want a handshake", aeadErr)
		}
	})

	t.Run("pprof-off", func(t *testing.T) {
		status := 0
		resp, err := l.sipcar.client.Get(l.sipcar.admin + "/debug/pprof/")
		if err == nil {
			status = resp.StatusCode
			resp.Body.Close()
		}
		t.Logf("figure %s: GET /debug/pprof/ without SIPCAR_PPROF: %d %v", attack, status, err)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusNotFound {
			t.Errorf("GET /debug/pprof/ without SIPCAR_PPROF=true: %d; want 404", status)
		}
	})

	callErr := l.phoneCall(netip.AddrPortFrom(phoneAddr, 5072), "after-smaller-points")
	l.sipcar.figures(t, attack, "after")
	t.Logf("figure %s: phone's call: %s", attack, outcome(callErr))
	if callErr != nil {
		t.Errorf("the phone's call: %v", callErr)
	}
}
