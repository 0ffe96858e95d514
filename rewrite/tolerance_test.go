package rewrite

import (
	"bytes"
	"strings"
	"testing"
)

// The classes of issue 16 that live in rewrite: what sipcar does not need to understand is
// carried. Every message here is written for its row.

// From and To are never rewritten, so their URIs are not judged; only their tags are read, and
// those must be read right whatever the URI holds.
func TestFromToNotJudged(t *testing.T) {
	tests := []struct {
		name, from, to string
		fromTag, toTag string // "-" for no tag
	}{
		{"masked IPv4", `<sip:user@00.000.00.0>;tag=a1`, `sip:user@00.000.00.0`, "a1", "-"},
		{"masked with port, no brackets", `sip:alice@00.000.00.0:5060;tag=b2`, `<sip:bob@000.00.0.00:5060>;tag=c3`, "b2", "c3"},
		{"octet over 255", `<sip:a@999.999.999.999>;tag=x`, `<sip:b@1.2.3.4.5>`, "x", "-"},
		{"bad IPv6 reference", `<sip:a@[2001:db8::zz]>;tag=y`, `<sip:b@[v6>`, "y", "-"},
		{"spaces in the URI", `"A" < sip:a@example.org >;tag=z`, `<sip:b c@example.org>`, "z", "-"},
		{"no scheme", `alice;tag=n`, `bob`, "n", "-"},
		{"unknown scheme", `<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>;tag=u`, `isbn:2983792873`, "u", "-"},
		{"empty user", `<sip:@host>;tag=e`, `<sip:;x@host>;tag=f`, "e", "f"},
		{"display name of any characters", `Bell, Alexander <sip:a.g.bell@example.com>;tag=43`, `Watson, Thomas (the 2nd) <sip:t@example.org>`, "43", "-"},
		{"tag-like text inside the URI", `<sip:a@h;tag=inside>;tag=outside`, `"x;tag=quoted" <sip:b@h>;tag=real`, "outside", "real"},
		{"empty tag", `<sip:a@h>;tag`, `<sip:b@h>;tag=`, "", ""},
		{"quoted parameter before the tag", `<sip:a@h>;x="a;tag=no";tag=yes`, `<sip:b@h>`, "yes", "-"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msg := "INVITE sip:bob@1.1.1.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.1:2000;branch=z9hG4bK1\r\n" +
				"From: " + tc.from + "\r\nTo: " + tc.to + "\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContact: <sip:a@192.168.1.1:2000>\r\n\r\n"
			var m Message
			if err := Parse([]byte(msg), &m); err != nil {
				t.Fatalf("refused: %v", err)
			}
			for _, c := range []struct {
				name string
				got  []byte
				want string
			}{{"From", m.FromTag(), tc.fromTag}, {"To", m.ToTag(), tc.toTag}} {
				if c.want == "-" {
					if c.got != nil {
						t.Errorf("%s tag %q, want none", c.name, c.got)
					}
				} else if c.got == nil || string(c.got) != c.want {
					t.Errorf("%s tag %q (nil %v), want %q", c.name, c.got, c.got == nil, c.want)
				}
			}
			var r Result
			if err := Rewrite(&r, &m, Inside, newNAT()); err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, tc.name, m.Bytes(), &r)
			for _, want := range []string{"\r\nFrom: " + tc.from + "\r\n", "\r\nTo: " + tc.to + "\r\n", "Contact: <sip:a@1.1.1.10:2222>"} {
				if !bytes.Contains(r.Out, []byte(want)) {
					t.Errorf("output lacks %q:\n%s", want, r.Out)
				}
			}
		})
	}
}

// A host that is an IPv4address by RFC 3261's ABNF but no address netip reads (masked captures,
// leading zeros, octets over 255) is text, like a host name: carried, never translated, never
// read as an address. Numeric hosts outside the ABNF are still refused (TestMalformed).
func TestHostsByABNF(t *testing.T) {
	for _, host := range []string{"00.000.00.0", "192.168.001.010", "999.999.999.999", "0.0.0.00"} {
		t.Run(host, func(t *testing.T) {
			msg := "INVITE sip:bob@" + host + " SIP/2.0\r\n" +
				"Via: SIP/2.0/UDP " + host + ":5060;branch=z9hG4bK1;received=" + host + ";maddr=" + host + "\r\n" +
				"Via: SIP/2.0/UDP 192.168.1.1:2000;branch=z9hG4bK0\r\n" +
				"Route: <sip:" + host + ";lr>\r\nRecord-Route: <sip:" + host + ":5070;lr>\r\n" +
				"From: <sip:a@" + host + ">;tag=1\r\nTo: <sip:b@" + host + ">\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n" +
				"Contact: <sip:a@" + host + ":5062;transport=tcp>, sip:a@192.168.1.1:2000\r\nContent-Length: 0\r\n\r\n"
			var m Message
			if err := Parse([]byte(msg), &m); err != nil {
				t.Fatalf("refused: %v", err)
			}
			nat := newNAT()
			var r Result
			if err := Rewrite(&r, &m, Inside, nat); err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, host, m.Bytes(), &r)
			if len(nat.translated) != 2 {
				t.Errorf("translator asked %d addresses, want only the two real ones: %+v", len(nat.translated), nat.translated)
			}
			want := strings.ReplaceAll(msg, "192.168.1.1:2000", "1.1.1.10:2222")
			if string(r.Out) != want {
				t.Errorf("got\n%s\nwant\n%s", r.Out, want)
			}
			if _, ok := ViaSentBy(m.TopVia()); ok {
				t.Error("ViaSentBy read a masked host as an address")
			}
			if _, ok := URIAddr(m.RequestURI()); ok {
				t.Error("URIAddr read a masked host as an address")
			}
		})
	}
}
