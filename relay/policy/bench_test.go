package policy

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sipcar/sipcar/rewrite"
)

// benchRules returns 100 rules of which only the last matches the benchmark INVITE, and every
// one of the others matches its method and transport, so each is checked down to its source list:
// the longest path through 100 rules.
func benchRules(b *testing.B, last string) *Rules {
	var text strings.Builder
	for i := 1; i < 100; i++ {
		fmt.Fprintf(&text, "permit src=10.%d.0.0/16,2001:db8:%x::/48 dst=203.0.113.0/24,inside,*.example.net method=INVITE,REGISTER,OPTIONS transport=udp,tcp\n", i, i)
	}
	text.WriteString(last)
	rs, err := Parse(text.String())
	if err != nil {
		b.Fatal(err)
	}
	if rs.Len() != 100 {
		b.Fatalf("%d rules", rs.Len())
	}
	return rs
}

// benchMessage parses rewrite's benchmark INVITE, the message BenchmarkRewriteInvite rewrites.
func benchMessage(b *testing.B) *rewrite.Message {
	raw, err := os.ReadFile("../../rewrite/testdata/bench/invite.in")
	if err != nil {
		b.Fatal(err)
	}
	var m rewrite.Message
	if err := rewrite.Parse(raw, &m); err != nil {
		b.Fatal(err)
	}
	return &m
}

// uriHost returns the host of a sip: Request-URI (enough for the benchmark message).
func uriHost(uri []byte) []byte {
	if i := bytes.IndexByte(uri, '@'); i >= 0 {
		uri = uri[i+1:]
	} else if i := bytes.IndexByte(uri, ':'); i >= 0 {
		uri = uri[i+1:]
	}
	for i, c := range uri {
		if c == ';' || c == ':' || c == '>' || c == '?' {
			return uri[:i]
		}
	}
	return uri
}

// benchEvaluate evaluates the benchmark INVITE from src, building the Request from the parsed
// message in the loop as the relay would (the []byte-to-string conversions must not allocate).
func benchEvaluate(b *testing.B, rules *Rules, src, dst string, wantRule int) {
	benchEvaluateAt(b, rules, src, dst, wantRule, time.Time{})
}

// benchEvaluateAt is benchEvaluate with Request.Time set to at.
func benchEvaluateAt(b *testing.B, rules *Rules, src, dst string, wantRule int, at time.Time) {
	m := benchMessage(b)
	p, err := New(rules, Config{Default: Deny})
	if err != nil {
		b.Fatal(err)
	}
	from := netip.MustParseAddrPort(src)
	to := netip.MustParseAddr(dst)
	host := uriHost(m.RequestURI()) // the relay has it from routing the request
	b.ReportAllocs()
	var d Decision
	for b.Loop() {
		d = p.Evaluate(Request{
			Src:       from,
			DstAddr:   to,
			DstHost:   string(host),
			DstSide:   Outside,
			Transport: "udp",
			Method:    string(m.Method()),
			Initial:   true,
			Time:      at,
		})
	}
	if d.Rule != wantRule {
		b.Fatalf("decided by rule %d (%+v), want %d", d.Rule, d, wantRule)
	}
}

// BenchmarkEvaluate100Rules is the policy's cost per message beside BenchmarkRewriteInvite: the
// INVITE goes through 99 rules that fail on their source to the 100th.
func BenchmarkEvaluate100Rules(b *testing.B) {
	benchEvaluate(b, benchRules(b, "permit src=192.168.1.0/24 dst=pbx.example.com method=INVITE,ACK,BYE,CANCEL"), "192.168.1.23:5060", "198.51.100.10", 100)
}

// BenchmarkEvaluate100RulesGivenTime is BenchmarkEvaluate100Rules with the time the relay has
// already read passed in Request.Time: the clock read it saves.
func BenchmarkEvaluate100RulesGivenTime(b *testing.B) {
	benchEvaluateAt(b, benchRules(b, "permit src=192.168.1.0/24 dst=pbx.example.com method=INVITE,ACK,BYE,CANCEL"), "192.168.1.23:5060", "198.51.100.10", 100, time.Now())
}

// BenchmarkEvaluate100RulesScan is BenchmarkEvaluate100Rules without the index, rule by rule
// (what rule sets too large to index get).
func BenchmarkEvaluate100RulesScan(b *testing.B) {
	rules := benchRules(b, "permit src=192.168.1.0/24 dst=pbx.example.com method=INVITE,ACK,BYE,CANCEL")
	rules.index = nil
	benchEvaluate(b, rules, "192.168.1.23:5060", "198.51.100.10", 100)
}

// BenchmarkEvaluate100RulesDefault: no rule matches, the default decides.
func BenchmarkEvaluate100RulesDefault(b *testing.B) {
	benchEvaluate(b, benchRules(b, "permit src=192.168.1.0/24 dst=pbx.example.com method=INVITE,ACK,BYE,CANCEL"), "198.18.0.23:5060", "198.51.100.10", 0)
}

// BenchmarkEvaluate100RulesRate: the 100th rule has a rate (high enough never to refuse), so the
// source's bucket is taken each time.
func BenchmarkEvaluate100RulesRate(b *testing.B) {
	benchEvaluate(b, benchRules(b, "permit src=192.168.1.0/24 dst=pbx.example.com rate=1000000/s burst=1000000"), "192.168.1.23:5060", "198.51.100.10", 100)
}

// BenchmarkEvaluateFirstRule: the first rule matches.
func BenchmarkEvaluateFirstRule(b *testing.B) {
	benchEvaluate(b, benchRules(b, "deny"), "10.1.2.3:5060", "203.0.113.10", 1)
}

// BenchmarkEvaluate100RulesHosts: every rule has dst host names, exact and wildcard, so the
// INVITE's host (pbx.example.com) is looked up as a name and as the parents .example.com and
// .com; the 100th rule matches by its wildcard.
func BenchmarkEvaluate100RulesHosts(b *testing.B) {
	var text strings.Builder
	for i := 1; i < 100; i++ {
		fmt.Fprintf(&text, "deny src=10.%d.0.0/16 dst=sip%d.example.com,*.example%d.org method=INVITE,BYE\n", i, i, i)
	}
	text.WriteString("permit src=192.168.1.0/24 dst=*.example.com")
	rules, err := Parse(text.String())
	if err != nil {
		b.Fatal(err)
	}
	benchEvaluate(b, rules, "192.168.1.23:5060", "198.51.100.10", 100)
}

// BenchmarkEvaluate100RulesParallel evaluates from every core at once (the hit counters are
// shared).
func BenchmarkEvaluate100RulesParallel(b *testing.B) {
	p, err := New(benchRules(b, "permit src=192.168.1.0/24 dst=pbx.example.com"), Config{Default: Deny})
	if err != nil {
		b.Fatal(err)
	}
	req := Request{Src: netip.MustParseAddrPort("192.168.1.23:5060"), DstHost: "pbx.example.com", Transport: "udp", Method: "INVITE", Initial: true}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if d := p.Evaluate(req); d.Rule != 100 {
				b.Errorf("rule %d", d.Rule)
				return
			}
		}
	})
}

// BenchmarkParse100Rules is the cost of a reload.
func BenchmarkParse100Rules(b *testing.B) {
	text := benchRules(b, "deny").String()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(text); err != nil {
			b.Fatal(err)
		}
	}
}
