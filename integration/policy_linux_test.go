package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPolicy screens requests through the running relay (upstream mode, UDP): a permitted phone
// calls, a denied source gets 403 naming the rule, a scanner's OPTIONS is dropped by a silent
// rule, a rate rule throttles one source's INVITE flood while another source calls, and a
// reload on SIGHUP changes the outcome for new requests without cutting the call in progress
// (and a reload with a broken rule keeps the old rules).
func TestPolicy(t *testing.T) {
	t.Run("permit-deny-silent", func(t *testing.T) {
		t.Parallel()
		testPolicyPermitDenySilent(t)
	})
	t.Run("rate-limit-flood", func(t *testing.T) {
		t.Parallel()
		testPolicyRateLimit(t)
	})
	t.Run("rate-limit-retransmissions", func(t *testing.T) {
		t.Parallel()
		testPolicyRateLimitRetransmit(t)
	})
	t.Run("rate-limit-unanswered-retransmissions", func(t *testing.T) {
		t.Parallel()
		testPolicyRateLimitUnanswered(t)
	})
	t.Run("sighup-reload", func(t *testing.T) {
		t.Parallel()
		testPolicyReload(t)
	})
}

// Sources on the phone's link besides the phone (198.51.100.20): another phone, a denied host
// and a scanner.
var (
	otherPhoneAddr = netip.MustParseAddr("198.51.100.21")
	deniedAddr     = netip.MustParseAddr("198.51.100.30")
	scannerAddr    = netip.MustParseAddr("198.51.100.66")
)

// addPhoneAddr gives the phone's interface one more address, so that one namespace holds several
// sources.
func (l *upstreamLab) addPhoneAddr(a netip.Addr) {
	l.t.Helper()
	if err := ipCmd("-n", l.phone.name, "addr", "add", l.plan.cidr(a), "dev", "eth0"); err != nil {
		l.t.Fatal(err)
	}
}

// policySnapshot is the admin endpoint's JSON view of the policy (/policy).
type policySnapshot struct {
	Loaded  time.Time    `json:"loaded"`
	Rules   []policyRule `json:"rules"`
	Default policyRule   `json:"default"`
}

type policyRule struct {
	Rule int    `json:"rule"`
	Text string `json:"text"`
	Hits uint64 `json:"hits"`
	Rate *struct {
		PerSecond   float64 `json:"per_second"`
		Burst       int     `json:"burst"`
		RateLimited uint64  `json:"rate_limited"`
	} `json:"rate"`
}

func (s policySnapshot) texts() []string {
	var ts []string
	for _, r := range s.Rules {
		ts = append(ts, r.Text)
	}
	return ts
}

// policy reads /policy as JSON or fails the test.
func (s *sipcarProc) policy(t testing.TB) policySnapshot {
	t.Helper()
	b, err := s.get("/policy")
	if err != nil {
		t.Fatal(err)
	}
	var p policySnapshot
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("decode /policy: %v: %s", err, b)
	}
	return p
}

// inviteFrom sends an INVITE with SDP from peer to sipcar and returns sipcar's final answer,
// which it ACKs.
func inviteFrom(t *testing.T, peer *udpPeer, callID string) *sipMsg {
	t.Helper()
	sipcarAddr := netip.AddrPortFrom(publicAddr, 5060)
	via := fmt.Sprintf("Via: SIP/2.0/UDP %v;branch=z9hG4bK%s", peer.addr, callID)
	from := fmt.Sprintf("From: <sip:caller@%v>;tag=%s", peer.addr.Addr(), callID)
	peer.send(t, sipcarAddr, buildSIP("INVITE sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		via, from, "To: <sip:pbx@198.51.100.1>", "Call-ID: " + callID, "CSeq: 1 INVITE",
		fmt.Sprintf("Contact: <sip:caller@%v>", peer.addr), "Max-Forwards: 70", "Content-Type: application/sdp",
	}, offer(netip.AddrPortFrom(peer.addr.Addr(), 7000))))
	resp := peer.recv(t, 5*time.Second, "the final answer to INVITE "+callID, func(m *sipMsg) bool {
		return isResponse("INVITE", 0)(m) && m.header("Call-ID") == callID
	})
	peer.send(t, sipcarAddr, buildSIP("ACK sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		via, from, "To: " + resp.header("To"), "Call-ID: " + callID, "CSeq: 1 ACK", "Max-Forwards: 70",
	}, ""))
	return resp
}

// options builds an out-of-dialog OPTIONS from addr.
func options(addr netip.AddrPort, callID string) []byte {
	return buildSIP("OPTIONS sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		fmt.Sprintf("Via: SIP/2.0/UDP %v;branch=z9hG4bK%s", addr, callID),
		fmt.Sprintf("From: <sip:probe@%v>;tag=%s", addr.Addr(), callID),
		"To: <sip:pbx@198.51.100.1>", "Call-ID: " + callID, "CSeq: 1 OPTIONS", "Max-Forwards: 70",
	}, "")
}

// checkDenied checks that resp is the 403 of rule n (text as written) with its Warning.
func checkDenied(t *testing.T, resp *sipMsg, n int, text string) {
	t.Helper()
	if resp.status() != 403 {
		t.Errorf("answer %q; want 403 Forbidden from policy rule %d (%s)", resp.start, n, text)
	}
	want := fmt.Sprintf(`399 sipcar "denied by policy rule %d: %s"`, n, text)
	if w := resp.header("Warning"); w != want {
		t.Errorf("Warning: %q; want %q", w, want)
	}
	// A denied source is not welcome later either: only the 503 of a rate says when to retry
	// (relay/policy/README.md, "What a decision does").
	if ra := resp.headers("Retry-After"); len(ra) != 0 {
		t.Errorf("403 of a deny rule carries Retry-After %q; want none (Retry-After belongs to the 503 of a rate)", ra)
	}
}

// testPolicyPermitDenySilent: rule 1 drops a scanner silently, rule 2 refuses a host with 403,
// rule 3 permits the phone, and the default denies the rest. The phone's call completes; the
// denied INVITE and the scanner's OPTIONS never reach the PBX.
func testPolicyPermitDenySilent(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	l.addPhoneAddr(deniedAddr)
	l.addPhoneAddr(scannerAddr)
	rules := []string{
		"deny src=198.51.100.66 silent",
		"deny src=198.51.100.30",
		"permit src=198.51.100.20",
	}
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp",
		"SIPCAR_POLICY="+strings.Join(rules, "; "), "SIPCAR_POLICY_DEFAULT=deny")...)
	if got := car.policy(t).texts(); strings.Join(got, "\n") != strings.Join(rules, "\n") {
		t.Fatalf("/policy rules %q; want %q", got, rules)
	}

	// 1. The permitted phone calls.
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 500, rtpPcap: true})
	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")

	// From here the PBX is a socket that records what reaches it.
	pbxPeer := l.udpPeer(l.pbx, netip.AddrPortFrom(pbxAddr, 5060))

	// 2. The denied source gets 403 naming rule 2.
	denied := l.udpPeer(l.phone, netip.AddrPortFrom(deniedAddr, 5060))
	resp := inviteFrom(t, denied, "denied-1")
	t.Logf("denied INVITE: %s, Warning: %s", resp.start, resp.header("Warning"))
	checkDenied(t, resp, 2, rules[1])

	// 3. The scanner's OPTIONS is dropped: no answer, and once sipcar has decided (rule 1's hit),
	// a permitted probe is the first thing the PBX receives.
	scanner := l.udpPeer(l.phone, netip.AddrPortFrom(scannerAddr, 5060))
	scanner.send(t, netip.AddrPortFrom(publicAddr, 5060), options(scanner.addr, "scan-1"))
	eventually(t, 5*time.Second, "policy rule 1 (silent) deciding the scanner's OPTIONS", func() (bool, string) {
		p := car.policy(t)
		return p.Rules[0].Hits == 1, fmt.Sprintf("%+v", p.Rules)
	})
	probePeer := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	probePeer.send(t, netip.AddrPortFrom(publicAddr, 5060), options(probePeer.addr, "probe-1"))
	got := pbxPeer.recv(t, 5*time.Second, "the permitted probe OPTIONS at the PBX", nil)
	if id := got.header("Call-ID"); id != "probe-1" {
		t.Errorf("the PBX received %q (Call-ID %q) before the probe: a denied request was forwarded", got.start, id)
	}
	if m, err := scanner.tryRecv(time.Second, nil); err != errNothing {
		t.Errorf("the scanner got an answer from a silent deny rule: %v %v", m, err)
	}

	p := car.policy(t)
	for i, want := range []uint64{1, 1, 2} { // rule 3: the call's INVITE and the probe
		if p.Rules[i].Hits != want {
			t.Errorf("/policy rule %d %q: %d hits; want %d", i+1, p.Rules[i].Text, p.Rules[i].Hits, want)
		}
	}
	text, err := car.get("/policy?format=text")
	if err != nil {
		t.Fatal(err)
	}
	showCmd := l.car.command(suite.sipcar, "show", "policy") // the default admin address, as sipcar's
	showCmd.Env = cleanEnviron()
	show, err := showCmd.CombinedOutput()
	if err != nil {
		t.Errorf("sipcar show policy: %v\n%s", err, show)
	}
	for _, want := range []string{"rule 1: deny src=198.51.100.66 silent, hits 1,", "rule 2: deny src=198.51.100.30, hits 1,",
		"rule 3: permit src=198.51.100.20, hits 2,", "default: deny, hits 0,"} {
		if !strings.Contains(string(text), want) {
			t.Errorf("/policy?format=text lacks %q:\n%s", want, text)
		}
		if !strings.Contains(string(show), want) {
			t.Errorf("sipcar show policy lacks %q:\n%s", want, show)
		}
	}
}

// testPolicyRateLimit: rule 1 lets the flooding phone start 2 calls at once and one a minute
// after that (burst 2, rate 1/m); another phone's calls at the same time all go through. The
// counts hold however the machine schedules sipp and sipcar: the flood's 20 INVITEs end within
// sipp's own 60 s timeout, before the bucket refills a token, so exactly the burst is answered
// and the rest refused with 503; each INVITE is screened once (a retransmission, which a slow
// answer on a loaded machine draws, is answered again without being screened); and the 18
// refusals stay within the 20 answers that SIPCAR_MAX_ERROR_REPLY_RATE's default lets one source
// have at once, so every refusal is answered.
func testPolicyRateLimit(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	l.addPhoneAddr(otherPhoneAddr)
	const (
		burst      = 2
		floodCalls = 20
		otherCalls = 5
		refused    = floodCalls - burst
	)
	rule := "permit src=198.51.100.20/32 method=INVITE rate=1/m burst=2"
	l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), calls: 1000})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp",
		"SIPCAR_POLICY="+rule+"; permit src=198.51.100.21/32", "SIPCAR_POLICY_DEFAULT=deny")...)

	flood := l.sipp(l.phone, "flood", sippOpts{scenario: "uac_flood.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", calls: floodCalls, extra: []string{"-r", "20"}})
	other := l.sipp(l.phone, "other", sippOpts{scenario: "uac_flood.xml", local: otherPhoneAddr.String(),
		port: 5062, media: 6100, remote: publicAddr.String() + ":5060", calls: otherCalls, extra: []string{"-r", "5"}})
	if _, err := flood.wait(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := flood.stats()
	if err != nil {
		t.Fatal(err)
	}
	other.succeeded(t, 90*time.Second, otherCalls)

	p := car.policy(t)
	ms := car.metrics(t)
	t.Logf("flood of %d INVITEs: %d answered, %d refused; rule 1: %d hits, %d rate-limited; dropped by policy %.0f, retransmissions answered again %.0f",
		floodCalls, st.successful, st.failed, p.Rules[0].Hits, rateLimited(p.Rules[0]), dropped(ms, "policy"), dropped(ms, "retransmission"))
	if st.successful != burst || st.failed != refused {
		t.Errorf("flood: %d calls answered and %d refused; want the burst (%d) answered and %d refused", st.successful, st.failed, burst, refused)
	}
	r := p.Rules[0]
	if r.Text != rule || r.Rate == nil {
		t.Fatalf("/policy rule 1: %+v; want %q with rate counters", r, rule)
	}
	if r.Hits != floodCalls || r.Rate.RateLimited != refused {
		t.Errorf("/policy rule 1: %d hits, %d rate-limited; want every INVITE screened once (%d) and %d rate-limited",
			r.Hits, r.Rate.RateLimited, floodCalls, refused)
	}
	if n := dropped(ms, "policy"); n != refused {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="policy"} %.0f; want %d (the refused INVITEs)`, n, refused)
	}
	if p.Rules[1].Hits != otherCalls {
		t.Errorf("/policy rule 2 (the other phone): %d hits; want %d", p.Rules[1].Hits, otherCalls)
	}

	// The refusals the flood saw: 503 with Retry-After and a Warning naming the rule.
	resp := firstLoggedResponse(t, flood.dir, 503)
	want := fmt.Sprintf(`399 sipcar "rate limited by policy rule 1: %s"`, rule)
	if w := resp.header("Warning"); w != want {
		t.Errorf("503 Warning: %q; want %q", w, want)
	}
	if n, err := strconv.Atoi(resp.header("Retry-After")); err != nil || n <= 0 {
		t.Errorf("503 Retry-After: %q; want a number of seconds", resp.header("Retry-After"))
	}
	car.waitNoMedia(t, "the calls' BYEs")
}

// rateLimited returns a rule's rate-limited count, 0 for a rule without a rate.
func rateLimited(r policyRule) uint64 {
	if r.Rate == nil {
		return 0
	}
	return r.Rate.RateLimited
}

// firstLoggedResponse finds the first response with status code in the messages log of a sipp
// run (-trace_msg) in dir.
func firstLoggedResponse(t *testing.T, dir string, code int) *sipMsg {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "*_messages.log"))
	if len(logs) != 1 {
		t.Fatalf("sipp messages logs in %s: %q; want one", dir, logs)
	}
	b, err := os.ReadFile(logs[0])
	if err != nil {
		t.Fatal(err)
	}
	start := fmt.Sprintf("SIP/2.0 %d ", code)
	i := strings.Index(string(b), start)
	if i < 0 {
		t.Fatalf("no %q in %s", start, logs[0])
	}
	// sipp logs a message as received, then a line of dashes or a blank line and a timestamp.
	msg := strings.ReplaceAll(string(b[i:]), "\r\n", "\n")
	head, _, _ := strings.Cut(msg, "\n\n")
	lines := strings.Split(head, "\n")
	return &sipMsg{start: lines[0], head: lines[1:]}
}

// testPolicyReload: the phone's call is held up while the rules are reloaded from a file that
// denies its INVITEs: a new INVITE is refused with the new rule, the call in progress still ends
// with BYE/200. A reload of a file with a broken rule keeps the rules in force.
func testPolicyReload(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	file := filepath.Join(l.dir, "policy")
	writePolicy := func(text string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	permitRule := "permit src=198.51.100.20/32 method=INVITE"
	denyRule := "deny src=198.51.100.20/32 method=INVITE"
	writePolicy("# the phone may call\n" + permitRule + "\n")
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", "SIPCAR_POLICY_FILE="+file, "SIPCAR_POLICY_DEFAULT=deny")...)
	l.writeLongRTPPcap("phone", 150) // 3 s of media, then the call is held until the BYE
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 8000})
	car.waitMap(t, 10*time.Second, "the call up with media both ways", mediaBothWays)
	if p := car.policy(t); len(p.Rules) != 1 || p.Rules[0].Text != permitRule || p.Rules[0].Hits != 1 {
		t.Fatalf("/policy before the reload: %+v; want only %q with 1 hit", p.Rules, permitRule)
	}

	hup := func(logLine string) {
		t.Helper()
		before := strings.Count(car.output(), logLine)
		if err := car.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "sipcar logging "+logLine, func() (bool, string) {
			return strings.Count(car.output(), logLine) > before, ""
		})
	}

	writePolicy("# the phone may call no more\n" + denyRule + "\n")
	hup(`msg="policy reloaded"`)
	reloaded := car.policy(t)
	if got := reloaded.texts(); len(got) != 1 || got[0] != denyRule {
		t.Fatalf("/policy after the reload: rules %q; want [%q]", got, denyRule)
	}
	late := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	checkDenied(t, inviteFrom(t, late, "after-reload-1"), 1, denyRule)

	// A broken rule (and a rule that would permit again): the reload fails, the rules stay.
	writePolicy(permitRule + "\ndeny src=198.51.100.0/33\n")
	hup(`msg="policy reload failed; the old rules stay in force"`)
	if !regexp.MustCompile(`policy rule 2 .*198\.51\.100\.0/33`).MatchString(car.output()) {
		t.Errorf("the failed reload's log does not name the broken rule (rule 2, 198.51.100.0/33)")
	}
	kept := car.policy(t)
	if got := kept.texts(); len(got) != 1 || got[0] != denyRule {
		t.Errorf("/policy after a broken reload: rules %q; want [%q] kept", got, denyRule)
	}
	if !kept.Loaded.Equal(reloaded.Loaded) {
		t.Errorf("/policy loaded %v after a broken reload; want %v (the rules in force)", kept.Loaded, reloaded.Loaded)
	}
	text, err := car.get("/policy?format=text")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(text), "rule 1: "+denyRule+", hits 1,") || strings.Contains(string(text), "rule 2:") {
		t.Errorf("/policy?format=text after a broken reload; want only rule 1 %q with 1 hit:\n%s", denyRule, text)
	}
	checkDenied(t, inviteFrom(t, late, "after-bad-reload-1"), 1, denyRule)

	if phone.exited() {
		t.Fatalf("the call ended before the reloads were done: the test did not hold it over them")
	}
	phone.succeeded(t, 30*time.Second, 1) // its BYE answered 200 after the reloads
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "the held call's BYE")
}
