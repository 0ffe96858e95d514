package integration

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// The checkers the dual-stack tests rely on, on messages written for them: each must find what
// it looks for, or those tests could pass on anything.

func TestIPLiterals(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"SIP/2.0/UDP [2001:db8:a::1]:40928;branch=z9hG4bK-1-0", []string{"2001:db8:a::1"}},
		{"SIP/2.0/UDP 198.18.0.1:5060;received=2001:db8:b::9:255;rport", []string{"2001:db8:b::9:255", "198.18.0.1"}},
		{"<sip:ted@[::ffff:203.0.113.2]>", []string{"203.0.113.2"}},
		{"sip:user@[2001:db8:b:::203.0.113.1]", []string{"2001:db8:b::cb00:7101"}},
		{"user1 53655765 2353687637 IN IP6 2001:db8:b::20", []string{"2001:db8:b::20"}},
		{"IN IP4 198.51.100.1", []string{"198.51.100.1"}},
		{"20001 IN IP4 198.51.100.1", []string{"198.51.100.1"}},
		{"sip:alice@example.com;transport=tcp", nil},
		{"Left-Time: 00:00:50", nil},
	} {
		var got []string
		for _, a := range ipLiterals(c.in) {
			got = append(got, a.String())
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("ipLiterals(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}

func TestAddressFieldsOf(t *testing.T) {
	msg := []byte("INVITE sip:bob@[2001:db8:a::10]:5060 SIP/2.0\r\n" +
		"v: SIP/2.0/UDP 198.18.0.1:4000;branch=z9hG4bK1\r\n" +
		"From: <sip:a@198.51.100.1>;tag=1\r\nTo: <sip:b@198.51.100.1>\r\nCall-ID: 1@198.51.100.20\r\n" +
		"m: <sip:a@198.18.0.1:4000>\r\nRecord-Route: <sip:198.18.0.1;lr>\r\nContent-Type: application/sdp\r\n\r\n" +
		"v=0\r\no=- 1 1 IN IP4 198.18.0.1\r\nc=IN IP4 198.18.0.1\r\nm=audio 20000 RTP/AVP 0\r\na=rtcp:20001 IN IP4 198.18.0.1\r\n")
	var names []string
	for _, f := range addressFieldsOf(msg) {
		names = append(names, f.name)
	}
	want := []string{"Request-URI", "Via", "Contact", "Record-Route", "o=", "c=", "a=rtcp"}
	if !slices.Equal(names, want) {
		t.Errorf("address fields %q; want %q (From, To and Call-ID are identities)", names, want)
	}
	// A message to an IPv4 peer naming an IPv6 address where it is to be reached fails the check.
	leaky := strings.Replace(string(msg), "m: <sip:a@198.18.0.1:4000>", "m: <sip:a@[2001:db8:b::1]:4000>", 1)
	for _, c := range []struct {
		msg    string
		errors int
	}{
		{strings.Replace(string(msg), "[2001:db8:a::10]", "198.18.0.10", 1), 0},
		{string(msg), 1}, // the Request-URI names an IPv6 address
		{leaky, 2},
	} {
		var r errorRecorder
		checkAddressesIn(&r, "test", []wireMsg{{raw: []byte(c.msg)}}, netip.MustParsePrefix("198.18.0.0/16"))
		if r.errors != c.errors {
			t.Errorf("checkAddressesIn found %d addresses outside 198.18.0.0/16; want %d, in\n%s", r.errors, c.errors, c.msg)
		}
	}
}

// errorRecorder counts the errors a checker reports.
type errorRecorder struct {
	testing.TB
	errors int
}

func (r *errorRecorder) Helper()               {}
func (r *errorRecorder) Errorf(string, ...any) { r.errors++ }

func TestMaskAddresses(t *testing.T) {
	sent := []byte("BYE sip:[2001:db8:b::10] SIP/2.0\r\nVia: SIP/2.0/TCP [2001:db8:b::9:255];branch=z9hG4bK1;received=203.0.113.200\r\n" +
		"Content-Length: 0\r\n\r\n")
	same := []byte("BYE sip:198.18.0.10 SIP/2.0\r\nVia: SIP/2.0/TCP 198.18.0.1:4000;branch=z9hG4bK1;received=198.18.0.1\r\n" +
		"Content-Length:   0\r\n\r\n")
	other := []byte("BYE sip:198.18.0.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.1:4000;branch=z9hG4bK1;received=198.18.0.1\r\n" +
		"Content-Length: 0\r\n\r\n")
	if a, b := maskAddresses(sent), maskAddresses(same); !slices.Equal(a, b) {
		t.Errorf("only addresses differ, but masked:\n%q\n%q", a, b)
	}
	if a, b := maskAddresses(sent), maskAddresses(other); slices.Equal(a, b) {
		t.Errorf("the transport differs, but masked both read %q", a)
	}
}

func TestViaMeaning(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"SIP/2.0/UDP [2001:db8:b::9:1];branch=z9hG4bK1", "SIP/2.0/UDP [2001:db8:b::9:1]:5060;branch=z9hG4bK1", true},
		{"SIP/2.0/UDP [::ffff:203.0.113.10]:19823;branch=z9hG4bK1", "SIP/2.0/UDP 203.0.113.10:19823;branch=z9hG4bK1", true},
		{"SIP/2.0/UDP [2001:db8:b::9:1];received=[2001:db8:b::9:255];branch=z9hG4bK1", "SIP/2.0/UDP [2001:db8:b::9:1];received=2001:db8:b::9:255;branch=z9hG4bK1", true},
		{"SIP/2.0/UDP [2001:db8:b::9:1];received=2001:db8:b::9:255;branch=z9hG4bK1", "SIP/2.0/UDP [2001:db8:b::9:1];received=2001:db8:b::9:1;branch=z9hG4bK1", false},
		{"SIP/2.0/TCP [2001:db8:b::9:255];branch=z9hG4bK1", "SIP/2.0/UDP [2001:db8:b::9:255];branch=z9hG4bK1", false},
		{"SIP/2.0/UDP [2001:db8:b::9:1]:5070;branch=z9hG4bK1", "SIP/2.0/UDP [2001:db8:b::9:1];branch=z9hG4bK1", false},
	} {
		if got := viaMeaning(c.a) == viaMeaning(c.b); got != c.same {
			t.Errorf("viaMeaning(%q) == viaMeaning(%q): %v; want %v (%s, %s)", c.a, c.b, got, c.same, viaMeaning(c.a), viaMeaning(c.b))
		}
	}
}
