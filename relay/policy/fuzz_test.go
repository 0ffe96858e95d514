package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzParse feeds the parser arbitrary text: it must never panic; what it accepts must read
// back the same from its String, be safe to quote in a Warning header, and evaluate.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"permit src=198.18.0.0/24 method=INVITE,REGISTER; deny src=any",
		"deny src=2001:db8:a::/64 dst=*.example.com,inside transport=udp,tls silent",
		"permit dst=upstream,203.0.113.0/24 rate=5/s burst=10\n# comment\ndeny method=OPTIONS silent",
		"permit rate=0.5/m; permit method=any transport=any",
		"permit src=::ffff:198.18.0.0/120 dst=pbx.example.com.",
		"deny src=10.0.0.0/33", "permit method=INVITE , REGISTER", "allow",
	} {
		f.Add(seed)
	}
	reqs := []Request{
		{},
		{Method: "INVITE", Transport: "udp", Initial: true},
		{Method: "REGISTER", Transport: "tls", DstSide: Inside, ToUpstream: true, DstHost: "a.example.com", Initial: true},
		{Src: netip.MustParseAddrPort("198.18.0.7:5060"), DstAddr: netip.MustParseAddr("203.0.113.5"), DstSide: Outside, Method: "OPTIONS", Transport: "UDP", DstHost: "PBX.example.com."},
		{Src: netip.MustParseAddrPort("[2001:db8:a::1]:5060"), DstAddr: netip.MustParseAddr("2001:db8:c::1"), Method: "INVITE", Transport: "tcp"},
	}
	f.Fuzz(func(t *testing.T, text string) {
		rs, err := Parse(text)
		if err != nil {
			if rs != nil {
				t.Fatal("rules with an error")
			}
			return
		}
		for i := range rs.Len() {
			rt := rs.At(i).String()
			if c, bad := badChar(rt); bad || strings.ContainsAny(rt, `"\`) {
				t.Fatalf("rule text %q has %q", rt, c)
			}
		}
		again, err := Parse(rs.String())
		if err != nil {
			t.Fatalf("String %q does not parse: %v", rs, err)
		}
		if again.String() != rs.String() || again.Len() != rs.Len() {
			t.Fatalf("String %q reads back as %q", rs, again)
		}
		p, err := New(rs, Config{Default: Deny})
		if err != nil {
			t.Fatal(err)
		}
		for _, req := range reqs {
			k := keysOf(&req)
			if got, want := rs.first(&req, &k), scan(rs.matchers, &req, &k); got != want {
				t.Fatalf("index says rule %d, scan %d, for %+v", got+1, want+1, req)
			}
			d := p.Evaluate(req)
			if d.Action != Permit && d.Action != Deny {
				t.Fatalf("decision %+v", d)
			}
		}
	})
}

// FuzzIndex checks the index against the rule-by-rule reference on arbitrary rules and requests.
func FuzzIndex(f *testing.F) {
	f.Add("permit src=198.18.0.0/24 dst=*.example.com,inside method=INVITE; deny dst=203.0.113.0/25,upstream transport=tls",
		[]byte{198, 18, 0, 7}, []byte{203, 0, 113, 5}, "a.example.com", "INVITE", "udp", uint8(1), false)
	f.Add("deny src=2001:db8:a::/64,::ffff:10.0.0.0/104; permit dst=pbx.example.com,2001:db8:c::/48",
		[]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, []byte{}, "PBX.example.com.", "BYE", "TCP", uint8(2), true)
	f.Fuzz(func(t *testing.T, text string, src, dst []byte, host, method, transport string, side uint8, up bool) {
		rs, err := Parse(text)
		if err != nil || rs.index == nil {
			return
		}
		addr := func(b []byte) netip.Addr {
			a, _ := netip.AddrFromSlice(b)
			return a
		}
		req := Request{Src: netip.AddrPortFrom(addr(src), 5060), DstAddr: addr(dst), DstHost: host,
			DstSide: Side(side % 3), ToUpstream: up, Method: method, Transport: transport}
		k := keysOf(&req)
		if got, want := rs.index.first(&req, &k), scan(rs.matchers, &req, &k); got != want {
			t.Fatalf("index says rule %d, scan %d, for %+v under %q", got+1, want+1, req, rs)
		}
	})
}
