package rewrite

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestReaders(t *testing.T) {
	ap := netip.MustParseAddrPort
	if a, ok := ViaSentBy([]byte("SIP/2.0/TLS 198.18.0.2;branch=z9hG4bK1, SIP/2.0/UDP 198.18.0.3:5070")); !ok || a != ap("198.18.0.2:5061") {
		t.Errorf("ViaSentBy = %v %v", a, ok)
	}
	if _, ok := ViaSentBy([]byte("SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1")); ok {
		t.Error("ViaSentBy of a host name")
	}
	for via, want := range map[string]string{
		"SIP/2.0/UDP 198.18.0.2:5060;branch=z9hG4bK1":                                 "198.18.0.2:5060",
		"SIP/2.0/UDP 198.18.0.2:5060;received=203.0.113.9;rport=4444;branch=z9hG4bK1": "203.0.113.9:4444",
		"SIP/2.0/UDP 198.18.0.2;rport;received=203.0.113.9":                           "203.0.113.9:5060",
		"SIP/2.0/UDP [2001:db8:a::2]:5062;received=[2001:db8:c::9];rport=7000":        "[2001:db8:c::9]:7000",
		"SIP/2.0/UDP [2001:db8:a::2]:5062;received=2001:db8:c::9":                     "[2001:db8:c::9]:5062",
	} {
		if a, ok := ViaResponseAddr([]byte(via)); !ok || a != ap(want) {
			t.Errorf("ViaResponseAddr(%s) = %v %v, want %s", via, a, ok, want)
		}
	}
	if a, lr, ok := RouteTarget([]byte("<sip:203.0.113.5;lr>, <sip:203.0.113.6>")); !ok || !lr || a != ap("203.0.113.5:5060") {
		t.Errorf("RouteTarget = %v %v %v", a, lr, ok)
	}
	if _, lr, ok := RouteTarget([]byte("<sip:203.0.113.5:5080;transport=tcp>")); !ok || lr {
		t.Errorf("strict route read as loose")
	}
	if a, ok := ContactAddr([]byte(`"Bob" <sip:bob@10.0.0.5:5070;transport=udp>;expires=60, <sip:bob@203.0.113.9>`)); !ok || a != ap("10.0.0.5:5070") {
		t.Errorf("ContactAddr = %v %v", a, ok)
	}
	if _, ok := ContactAddr([]byte("<sip:bob@phone.example.com>")); ok {
		t.Errorf("ContactAddr read a host name as an address")
	}
	if a, ok := URIAddr([]byte("sips:bob@[2001:db8:c::5]")); !ok || a != ap("[2001:db8:c::5]:5061") {
		t.Errorf("URIAddr = %v %v", a, ok)
	}
	if b := ViaParam([]byte("SIP/2.0/UDP 198.18.0.2;rport;branch=z9hG4bK77 , SIP/2.0/UDP x;branch=other"), "branch"); string(b) != "z9hG4bK77" {
		t.Errorf("ViaParam branch = %q", b)
	}
	if _, ok := URIAddr([]byte("tel:+4930123")); ok {
		t.Error("URIAddr of tel:")
	}
}

func TestContactCount(t *testing.T) {
	for msg, want := range map[string]int{
		"REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@r>;tag=1\r\nTo: <sip:a@r>\r\n" +
			"Call-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@198.18.0.2>, \"x, y\" <sip:a@198.18.0.3>;q=0.5\r\n" +
			"m: sip:a@198.18.0.4;expires=60\r\nContent-Length: 0\r\n\r\n": 3,
		"REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@r>;tag=1\r\nTo: <sip:a@r>\r\n" +
			"Call-ID: c\r\nCSeq: 1 REGISTER\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n": 1,
		"REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@r>;tag=1\r\nTo: <sip:a@r>\r\n" +
			"Call-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n": 0,
	} {
		var m Message
		if err := Parse([]byte(msg), &m); err != nil {
			t.Fatal(err)
		}
		if got := ContactCount(&m); got != want {
			t.Errorf("ContactCount = %d, want %d in\n%s", got, want, msg)
		}
	}
}

// A message naming more addresses than maxAddressValues is refused by Parse, which bounds what
// checking and rewriting one message may cost.
func TestTooManyAddresses(t *testing.T) {
	msg := func(n int) []byte {
		var b strings.Builder
		b.WriteString("REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@r>;tag=1\r\n" +
			"To: <sip:a@r>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: ")
		for i := range n {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "<sip:a@198.18.0.%d:%d>", i%250+1, 5060+i)
		}
		b.WriteString("\r\nContent-Length: 0\r\n\r\n")
		return []byte(b.String())
	}
	var m Message
	if err := Parse(msg(maxAddressValues-1), &m); err != nil {
		t.Fatalf("%d Contacts: %v", maxAddressValues-1, err)
	}
	if got := ContactCount(&m); got != maxAddressValues-1 {
		t.Errorf("ContactCount = %d", got)
	}
	err := Parse(msg(maxAddressValues+1), &m)
	var perr *Error
	if !errors.As(err, &perr) || !errors.Is(err, ErrTooMany) || perr.Where != "Contact" || !strings.Contains(perr.Reason, "more than") {
		t.Errorf("%d Contacts: %v; want ErrTooMany in Contact", maxAddressValues+1, err)
	}
}

// parseIP turns away what netip would refuse before asking it (netip allocates its error), and
// reads IPv4 itself: it must agree with netip on every input.
func TestParseIPAgreesWithNetip(t *testing.T) {
	inputs := []string{"", "0.0.0.0", "1.2.3.4", "255.255.255.255", "256.1.1.1", "1.2.3", "1.2.3.4.5", "1.2.3.", ".1.2.3",
		"01.2.3.4", "1.02.3.4", "1.2.3.00", "00.000.00.0", "192.168.001.010", "999.999.999.999", "1..2.3", "1.2.3.4a",
		"1.2.3.-4", "a.b.c.d", "example.com", "6f3c9a1e.local", "::", "::1", "2001:db8::1", "2001:db8::192.0.2.1",
		"::ffff:1.2.3.4", "2001:db8::zz", "2001:db8:::1", "fe80::1%eth0", "FF15::101", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9",
		"0000000000000000000000000000000000000001.1.1.1", "1.2.3.4:5060", "[::1]", "4294967295", "0x7f.0.0.1"}
	for _, in := range inputs {
		want, err := netip.ParseAddr(in)
		wantOK := err == nil && want.Zone() == ""
		got, ok := parseIP([]byte(in))
		if ok != wantOK || (ok && got != want) {
			t.Errorf("parseIP(%q) = %v %v, netip says %v %v", in, got, ok, want, err)
		}
	}
	name, masked := []byte("6f3c9a1e.local"), []byte("00.000.00.0")
	if n := testing.AllocsPerRun(100, func() { parseIP(name); parseIP(masked) }); n != 0 {
		t.Errorf("parseIP of a name allocates %v times", n)
	}
}

func TestViaNamesNoAddress(t *testing.T) {
	for via, want := range map[string]bool{
		"SIP/2.0/UDP 198.51.100.300:5070;branch=z9hG4bK1":   true,
		"SIP/2.0/UDP 00.000.00.0;branch=z9hG4bK1":           true,
		"SIP/2.0/UDP 198.51.100.3:5070;branch=z9hG4bK1":     false,
		"SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1":      false,
		"SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1":    false,
		"SIP/2.0/UDP 10.0.0.1, SIP/2.0/UDP 00.000.00.0;x=1": false,
	} {
		if got := ViaNamesNoAddress([]byte(via)); got != want {
			t.Errorf("ViaNamesNoAddress(%q) = %v, want %v", via, got, want)
		}
	}
}

// The first hop's received and rport (RFC 3261 18.2.1, RFC 3581) are added to the via-parm as
// the sender wrote it, nothing else changing.
func TestViaReceivedFrom(t *testing.T) {
	src := netip.MustParseAddrPort("203.0.113.7:40001")
	for _, c := range []struct{ in, want string }{
		{"SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;rport", "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;rport=40001;received=203.0.113.7"},
		{"SIP/2.0/UDP 10.0.0.5:5062;rport;branch=z9hG4bK1", "SIP/2.0/UDP 10.0.0.5:5062;rport=40001;branch=z9hG4bK1;received=203.0.113.7"},
		{"SIP/2.0/UDP 203.0.113.7:40001;branch=z9hG4bK1", "SIP/2.0/UDP 203.0.113.7:40001;branch=z9hG4bK1"},
		{"SIP/2.0/UDP phone.example.com;branch=z9hG4bK1", "SIP/2.0/UDP phone.example.com;branch=z9hG4bK1;received=203.0.113.7"},
		{"SIP/2.0/TCP [2001:db8:b::9:1];received=[2001:db8:b::9:255];branch=z9hG4bK1", "SIP/2.0/TCP [2001:db8:b::9:1];received=[2001:db8:b::9:255];branch=z9hG4bK1"},
		{"SIP/2.0/UDP [::ffff:203.0.113.7]:40001;branch=z9hG4bK1", "SIP/2.0/UDP [::ffff:203.0.113.7]:40001;branch=z9hG4bK1"},
	} {
		if got := string(ViaReceivedFrom(nil, []byte(c.in), src)); got != c.want {
			t.Errorf("ViaReceivedFrom(%s)\n got %s\nwant %s", c.in, got, c.want)
		}
	}
	if got := string(FirstViaParm([]byte("SIP/2.0/UDP 10.0.0.5;branch=a , SIP/2.0/UDP x;branch=b"))); got != "SIP/2.0/UDP 10.0.0.5;branch=a" {
		t.Errorf("FirstViaParm = %q", got)
	}
	v6 := netip.MustParseAddrPort("[2001:db8:b::9:1]:5060")
	if got := string(ViaReceivedFrom(nil, []byte("SIP/2.0/UDP [2001:db8:b::9:1];rport"), v6)); got != "SIP/2.0/UDP [2001:db8:b::9:1];rport=5060;received=2001:db8:b::9:1" {
		t.Errorf("IPv6: %s", got)
	}
}
