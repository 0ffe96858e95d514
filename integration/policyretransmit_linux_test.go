package integration

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testPolicyRateLimitRetransmit: a rate-limited flood where sipp retransmits. Rule 1 lets the
// phone's address start one call an hour (burst 1); a Go phone on it places that call, and then
// sipp floods from the same address with INVITEs that are all refused with 503. While the 503s
// cannot reach sipp (the phone's namespace drops them), sipp retransmits each INVITE; once every
// INVITE has been retransmitted (seen on sipcar's public interface), the 503s go through and sipp
// ACKs them. sipcar must screen each INVITE once: the refusals it counts (the policy drop
// reason, the rule's rate-limited count) equal the distinct INVITEs, the retransmissions are
// counted as such, and each copy of an INVITE got the same answer.
func testPolicyRateLimitRetransmit(t *testing.T) {
	const calls = 20
	rule := "permit src=198.51.100.20/32 method=INVITE rate=1/h burst=1"
	l := newAttackLab(t, nil, "SIPCAR_POLICY="+rule, "SIPCAR_POLICY_DEFAULT=deny",
		// Every copy of a refused INVITE is answered: sipcar's cap on its own answers (10/s per
		// source by default) would hold some back, by timing.
		"SIPCAR_MAX_ERROR_REPLY_RATE=0")
	if err := l.phoneCall(netip.AddrPortFrom(phoneAddr, 5070), "the-admitted-call"); err != nil {
		t.Fatalf("the call that takes the rule's one token: %v", err)
	}
	capt := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	// Incoming 503s (UDP from sipcar, "SIP/2.0 503 " at the start of the payload) are dropped in the
	// phone's namespace until every INVITE has been sent again.
	l.nft(l.phone, `table ip hold503 {
  chain in {
    type filter hook input priority 0; policy accept;
    ip saddr 198.51.100.1 udp sport 5060 @th,64,96 0x5349502f322e302035303320 counter drop
  }
}
`)
	flood := l.sipp(l.phone, "flood", sippOpts{scenario: "uac_refused.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", calls: calls, extra: []string{"-r", "10"}})
	eventually(t, 30*time.Second, "every flood INVITE retransmitted at sipcar's public interface", func() (bool, string) {
		pkts, err := readPcap(capt.path)
		if err != nil {
			return false, err.Error()
		}
		copies := inviteCopies(pkts)
		twice := 0
		for _, n := range copies {
			if n >= 2 {
				twice++
			}
		}
		return len(copies) == calls && twice == calls, fmt.Sprintf("%d INVITEs, %d of them retransmitted", len(copies), twice)
	})
	if out, err := l.phone.command("nft", "delete", "table", "ip", "hold503").CombinedOutput(); err != nil {
		t.Fatalf("nft delete table ip hold503: %v: %s", err, out)
	}
	flood.succeeded(t, 60*time.Second, calls) // each call refused with 503, ACKed
	st, err := flood.stats()
	if err != nil {
		t.Fatal(err)
	}
	pkts := capt.stop(t)

	// What crossed sipcar's public interface: per Call-ID, the INVITE's copies and the 503s.
	copies := inviteCopies(pkts)
	answers := make(map[string][][]byte)
	for _, m := range wireMessages(pkts) {
		if m.src == sipcarListen && m.status() == 503 && m.cseqMethod() == "INVITE" {
			id := callIDOf(m.raw)
			answers[id] = append(answers[id], m.raw)
		}
	}
	total := 0
	for _, n := range copies {
		total += n
	}
	p := l.sipcar.policy(t)
	ms := l.sipcar.metrics(t)
	retrans, _ := strconv.Atoi(st.raw["Retransmissions(C)"])
	t.Logf("figure rate-limited flood with retransmissions: %d distinct INVITEs, %d copies at sipcar (%d retransmissions; sipp counted %d); "+
		`dropped{reason="policy"} %.0f, {reason="retransmission"} %.0f; rule 1: %d hits, %d rate-limited`,
		len(copies), total, total-len(copies), retrans, dropped(ms, "policy"), dropped(ms, "retransmission"), p.Rules[0].Hits, rateLimited(p.Rules[0]))

	if len(copies) != calls {
		t.Fatalf("%d distinct INVITEs from the flood at sipcar; want %d", len(copies), calls)
	}
	if n := dropped(ms, "policy"); n != calls {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="policy"} %.0f; want %d, the distinct INVITEs refused (a retransmission is no new refusal)`, n, calls)
	}
	if r := p.Rules[0]; r.Hits != calls+1 || rateLimited(r) != calls {
		t.Errorf("/policy rule 1: %d hits, %d rate-limited; want %d hits (the admitted call and each flood INVITE once) and %d rate-limited",
			r.Hits, rateLimited(r), calls+1, calls)
	}
	if n := dropped(ms, "retransmission"); n != float64(total-calls) {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="retransmission"} %.0f; want %d, the copies of the INVITEs after the first`, n, total-calls)
	}
	if retrans != total-calls {
		t.Errorf("sipp counted %d retransmissions; %d copies beyond the first reached sipcar (a datagram lost?)", retrans, total-calls)
	}
	want := fmt.Sprintf(`399 sipcar "rate limited by policy rule 1: %s"`, rule)
	for id, n := range copies {
		as := answers[id]
		if len(as) != n {
			t.Errorf("INVITE %s: %d copies, %d answers from sipcar; want one answer each", id, n, len(as))
			continue
		}
		for i, a := range as[1:] {
			if !bytes.Equal(a, as[0]) {
				t.Errorf("INVITE %s: the answer to copy %d of %d differs from the first:\n%s\nthe first:\n%s", id, i+2, n, a, as[0])
				break
			}
		}
		m := parseLoose(as[0])
		if w := m.value("Warning"); w != want {
			t.Errorf("INVITE %s: 503 Warning %q; want %q", id, w, want)
		}
		if ra, err := strconv.Atoi(m.value("Retry-After")); err != nil || ra <= 0 {
			t.Errorf("INVITE %s: 503 Retry-After %q; want a number of seconds", id, m.value("Retry-After"))
		}
	}
	if n := l.srv.requestsOf("INVITE"); n != 1 {
		t.Errorf("%d INVITEs reached the PBX; want 1 (the admitted call's)", n)
	}
}

// inviteCopies counts the INVITEs per Call-ID that the phone's sipp (port 5060) sent to sipcar
// in a capture.
func inviteCopies(pkts []packet) map[string]int {
	copies := make(map[string]int)
	for _, p := range pkts {
		if p.proto == "udp" && p.dst == sipcarListen && p.src == netip.AddrPortFrom(phoneAddr, 5060) &&
			bytes.HasPrefix(p.payload, []byte("INVITE ")) {
			copies[callIDOf(p.payload)]++
		}
	}
	return copies
}

// callIDOf returns the Call-ID of a message.
func callIDOf(b []byte) string {
	return strings.TrimSpace(parseLoose(b).value("Call-ID"))
}

// testPolicyRateLimitUnanswered: a flood of refused INVITEs larger than sipcar's cap on its own
// answers to one source (SIPCAR_MAX_ERROR_REPLY_RATE, 10/s with a burst of 20 by default), so
// that some refusals go unanswered, and the phone (a Go peer) then sends each unanswered INVITE
// again, byte for byte, as a UAC retransmits. A retransmission is no new request: it is not
// screened a second time, so the refusals sipcar counts stay the distinct INVITEs.
func testPolicyRateLimitUnanswered(t *testing.T) {
	const invites = 60
	rule := "permit src=198.51.100.20/32 method=INVITE rate=1/h burst=1"
	l := newAttackLab(t, nil, "SIPCAR_POLICY="+rule, "SIPCAR_POLICY_DEFAULT=deny")
	ep, err := openUDPEndpoint(t, l.phone, netip.AddrPortFrom(phoneAddr, 5072))
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(map[string][]byte)
	for i := range invites {
		id := fmt.Sprintf("unanswered-%02d", i)
		msgs[id] = invite(ep, id, 1)
		if err := ep.send(sipcarListen, msgs[id]); err != nil {
			t.Fatal(err)
		}
	}
	answered := make(map[string]int)
	collect := func(quiet time.Duration) {
		for {
			m, err := ep.next(quiet, func(m *sipMsg) bool { return m.status() >= 200 && m.cseqMethod() == "INVITE" })
			if err != nil {
				return
			}
			answered[m.header("Call-ID")] = m.status()
			if m.status() >= 300 {
				ackFinal(ep, m)
			}
		}
	}
	collect(2 * time.Second)
	var unanswered []string
	for id := range msgs {
		if _, ok := answered[id]; !ok {
			unanswered = append(unanswered, id)
		}
	}
	before := l.sipcar.metrics(t)
	for _, id := range unanswered {
		if err := ep.send(sipcarListen, msgs[id]); err != nil {
			t.Fatal(err)
		}
	}
	collect(2 * time.Second)
	ms := l.sipcar.metrics(t)
	p := l.sipcar.policy(t)
	t.Logf("figure unanswered refusals: %d INVITEs, %d answered at first, %d sent again; dropped{policy} %.0f (%.0f before the retransmissions), "+
		"{reply-limit} %.0f, {retransmission} %.0f; rule 1: %d hits, %d rate-limited",
		invites, invites-len(unanswered), len(unanswered), dropped(ms, "policy"), dropped(before, "policy"),
		dropped(ms, "reply-limit"), dropped(ms, "retransmission"), p.Rules[0].Hits, rateLimited(p.Rules[0]))
	if len(unanswered) == 0 {
		t.Fatalf("every one of %d refusals was answered: the flood did not reach sipcar's cap on its answers", invites)
	}
	if n := dropped(ms, "policy"); n != invites-1 {
		t.Errorf(`sipcar_sip_messages_dropped_total{reason="policy"} %.0f after %d INVITEs were sent again; want %d, the distinct INVITEs refused`,
			n, len(unanswered), invites-1)
	}
	if r := p.Rules[0]; r.Hits != invites || rateLimited(r) != invites-1 {
		t.Errorf("/policy rule 1: %d hits, %d rate-limited; want each INVITE screened once: %d hits, %d rate-limited",
			r.Hits, rateLimited(r), invites, invites-1)
	}
}
