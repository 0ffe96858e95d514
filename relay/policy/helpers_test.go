package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// rq builds a request from "key=value" words, so that table rows read like the request:
// src= (address or address:port), dst= (DstAddr), host= (DstHost), side=inside|outside,
// upstream, transport=, method=, initial. Unset: from 198.18.0.7:5060, INVITE over udp.
func rq(t testing.TB, spec string) Request {
	t.Helper()
	r := Request{Src: netip.MustParseAddrPort("198.18.0.7:5060"), Transport: "udp", Method: "INVITE"}
	for w := range strings.FieldsSeq(spec) {
		k, v, _ := strings.Cut(w, "=")
		switch k {
		case "src":
			if ap, err := netip.ParseAddrPort(v); err == nil {
				r.Src = ap
			} else {
				r.Src = netip.AddrPortFrom(netip.MustParseAddr(v), 5060)
			}
		case "dst":
			r.DstAddr = netip.MustParseAddr(v)
		case "host":
			r.DstHost = v
		case "side":
			switch v {
			case "inside":
				r.DstSide = Inside
			case "outside":
				r.DstSide = Outside
			default:
				t.Fatalf("bad side %q", v)
			}
		case "upstream":
			r.ToUpstream = true
		case "transport":
			r.Transport = v
		case "method":
			r.Method = v
		case "initial":
			r.Initial = true
		default:
			t.Fatalf("bad request spec word %q", w)
		}
	}
	return r
}

func mustParse(t testing.TB, text string) *Rules {
	t.Helper()
	rs, err := Parse(text)
	if err != nil {
		t.Fatalf("Parse(%q): %v", text, err)
	}
	return rs
}

func mustNew(t testing.TB, rules *Rules, cfg Config) *Policy {
	t.Helper()
	if cfg.Default == 0 {
		cfg.Default = Deny
	}
	p, err := New(rules, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
