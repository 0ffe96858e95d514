package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// randomRules writes n rules from small pools of values that overlap, so that many rules match
// many requests, at the edges of the address spaces too.
func randomRules(rnd *rand.Rand, n int) string {
	srcs := []string{"198.18.0.0/24", "198.18.0.7", "198.18.0.0/25", "198.18.0.128/25", "0.0.0.0/0", "10.0.0.0/8",
		"2001:db8:a::/64", "2001:db8:a::1", "::/0", "2001:db8::/32", "203.0.113.0/24", "255.255.255.255",
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "0.0.0.0", "::", "::ffff:198.18.0.0/120", "2001:db8:a:0:8000::/65"}
	dsts := []string{"inside", "outside", "upstream", "203.0.113.0/24", "203.0.113.5", "2001:db8:c::/64", "0.0.0.0/1",
		"pbx.example.com", "*.example.com", "*.com", "sip.example.net", "*.sip.example.net", "PBX.Example.com."}
	transports := []string{"udp", "tcp", "tls"}
	methods := []string{"INVITE", "REGISTER", "BYE", "OPTIONS", "ACK"}
	pick := func(pool []string) string {
		if rnd.IntN(3) == 0 {
			return "any"
		}
		k := 1 + rnd.IntN(3)
		var items []string
		for range k {
			items = append(items, pool[rnd.IntN(len(pool))])
		}
		return strings.Join(items, ",")
	}
	var b strings.Builder
	for range n {
		b.WriteString([]string{"permit", "deny"}[rnd.IntN(2)])
		for _, f := range []struct {
			name string
			pool []string
		}{{"src", srcs}, {"dst", dsts}, {"transport", transports}, {"method", methods}} {
			if rnd.IntN(2) == 0 {
				b.WriteString(" " + f.name + "=" + pick(f.pool))
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

func randomRequest(rnd *rand.Rand) Request {
	addrs := []string{"198.18.0.7", "198.18.0.200", "10.1.1.1", "203.0.113.5", "203.0.113.77", "2001:db8:a::1", "2001:db8:a::2",
		"2001:db8:b::1", "2001:db8:c::9", "::ffff:198.18.0.7", "255.255.255.255", "0.0.0.0", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
		"2001:db8:a:0:8000::1", "127.0.0.1", ""}
	hosts := []string{"", "pbx.example.com", "PBX.EXAMPLE.COM.", "a.example.com", "example.com", ".example.com", "x.sip.example.net",
		"sip.example.net", "\u212aa.example.com", strings.Repeat("a.", 150) + "example.com", strings.Repeat("b", 300), "com"}
	addr := func() netip.Addr {
		s := addrs[rnd.IntN(len(addrs))]
		if s == "" {
			return netip.Addr{}
		}
		return netip.MustParseAddr(s)
	}
	return Request{
		Src:        netip.AddrPortFrom(addr(), 5060),
		DstAddr:    addr(),
		DstHost:    hosts[rnd.IntN(len(hosts))],
		DstSide:    Side(rnd.IntN(3)),
		ToUpstream: rnd.IntN(2) == 0,
		Transport:  []string{"udp", "TCP", "tls", "ws", ""}[rnd.IntN(5)],
		Method:     []string{"INVITE", "REGISTER", "BYE", "OPTIONS", "ACK", "FOO", "invite"}[rnd.IntN(7)],
	}
}

// TestIndexAgreesWithScan checks the index against the rule-by-rule reference on random rule
// sets (one and several words of bits) and random requests.
func TestIndexAgreesWithScan(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 5, 20, 63, 64, 65, 130} {
		matched := 0
		for range 20 {
			text := randomRules(rnd, n)
			rs := mustParse(t, text)
			if rs.index == nil {
				t.Fatalf("%d rules not indexed", n)
			}
			for range 300 {
				req := randomRequest(rnd)
				k := keysOf(&req)
				got, want := rs.index.first(&req, &k), scan(rs.matchers, &req, &k)
				if got != want {
					t.Fatalf("index says rule %d, scan %d, for %+v under\n%s", got+1, want+1, req, text)
				}
				if want >= 0 {
					matched++
				}
			}
		}
		if matched < 100 {
			t.Errorf("%d requests matched sets of %d rules: the test tests little", matched, n)
		}
	}
}

// TestLargeRuleSet checks that rule sets too large to index (too many rules, too many prefixes)
// are scanned, with the same results.
func TestLargeRuleSet(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	text := randomRules(rnd, maxIndexedRules+1)
	rs := mustParse(t, text)
	if rs.index != nil {
		t.Fatalf("%d rules indexed", rs.Len())
	}
	small := mustParse(t, strings.Join(strings.SplitAfter(text, "\n")[:maxIndexedRules], ""))
	if small.index == nil {
		t.Fatalf("%d rules not indexed", small.Len())
	}
	var many strings.Builder
	many.WriteString("deny src=")
	for i := range maxIndexedItems + 1 {
		if i > 0 {
			many.WriteString(",")
		}
		fmt.Fprintf(&many, "10.%d.%d.0/24", i/256, i%256)
	}
	if rs := mustParse(t, many.String()); rs.index != nil {
		t.Errorf("a rule of %d prefixes indexed", maxIndexedItems+1)
	}
	for range 1000 {
		req := randomRequest(rnd)
		k := keysOf(&req)
		got, want := rs.first(&req, &k), small.first(&req, &k)
		if got != want && (want != -1 || got != maxIndexedRules) {
			t.Fatalf("large set says %d, its first %d rules say %d", got, maxIndexedRules, want)
		}
	}
}
