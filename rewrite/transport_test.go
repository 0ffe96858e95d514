package rewrite

import (
	"net/netip"
	"strings"
	"testing"
)

// convertingNAT converts every translated address to one transport, as the relay does for a
// phone on TLS in front of a PBX on UDP.
type convertingNAT struct {
	*natTranslator
	to string
}

func (c convertingNAT) TranslateTransport(Addr, netip.AddrPort) string { return c.to }

// rewriteConverting rewrites in from the inside with every address converted to transport
// to, and checks the result's invariants.
func rewriteConverting(t *testing.T, in []byte, to string) *Result {
	t.Helper()
	var m Message
	var r Result
	if err := Parse(in, &m); err != nil {
		t.Fatal(err)
	}
	if err := Rewrite(&r, &m, Inside, convertingNAT{newNAT(), to}); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, "", m.Bytes(), &r)
	return &r
}

func TestTransportConversion(t *testing.T) {
	in := crlf("INVITE sips:bob@1.1.1.1 SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.1:5061;branch=z9hG4bK1\n" +
		"Via: SIP/2.0/TCP 192.168.1.2:5060;branch=z9hG4bK0\nTo: <sips:bob@1.1.1.1>\nFrom: <sips:alice@1.1.1.1>;tag=1\n" +
		"Call-ID: tls\nCSeq: 1 INVITE\nContact: <sips:alice@192.168.1.1:5061>;+sip.instance=x\n" +
		"Record-Route: <sip:192.168.1.3;transport=tcp;lr>\nContent-Length: 0\n\n")
	tests := []struct {
		to   string
		want []string
	}{
		{"udp", []string{"Via: SIP/2.0/UDP 1.1.1.10:2222;branch=z9hG4bK1\r\n", "Via: SIP/2.0/UDP 1.1.1.10:2223;branch=z9hG4bK0\r\n",
			"Contact: <sip:alice@1.1.1.10:2222;transport=udp>;+sip.instance=x\r\n", "Record-Route: <sip:1.1.1.10:2224;transport=udp;lr>\r\n",
			"INVITE sips:bob@1.1.1.1 SIP/2.0\r\n", "To: <sips:bob@1.1.1.1>\r\n"}},
		{"tls", []string{"Via: SIP/2.0/TLS 1.1.1.10:2222;", "Via: SIP/2.0/TLS 1.1.1.10:2223;", "Contact: <sips:alice@1.1.1.10:2222>;",
			"Record-Route: <sip:1.1.1.10:2224;transport=tls;lr>"}},
		{"", []string{"Via: SIP/2.0/TLS 1.1.1.10:2222;", "Via: SIP/2.0/TCP 1.1.1.10:2223;", "Contact: <sips:alice@1.1.1.10:2222>;",
			"Record-Route: <sip:1.1.1.10:2224;transport=tcp;lr>"}},
	}
	for _, tc := range tests {
		t.Run("to "+tc.to, func(t *testing.T) {
			r := rewriteConverting(t, in, tc.to)
			for _, w := range tc.want {
				if !strings.Contains(string(r.Out), w) {
					t.Errorf("output lacks %q:\n%s", w, r.Out)
				}
			}
		})
	}
}

// A Contact without angle brackets carries its parameters as header parameters (RFC 3261 section
// 20), though the UAs that write ;transport= there mean the URI's. A converted transport goes
// into the URI, which gets its brackets, and the loose parameter goes.
func TestTransportConversionBareContact(t *testing.T) {
	tests := []struct {
		contact, to, want string
	}{
		{"Contact: sip:sipp@192.168.1.1:5070;transport=UDP", "tls", "Contact: <sip:sipp@1.1.1.10:2222;transport=tls>\r\n"},
		{"Contact: sip:sipp@192.168.1.1:5070;expires=60;transport=udp;q=0.5", "tcp", "Contact: <sip:sipp@1.1.1.10:2222;transport=tcp>;expires=60;q=0.5\r\n"},
		{"Contact: sip:sipp@192.168.1.1:5070", "tls", "Contact: <sip:sipp@1.1.1.10:2222;transport=tls>\r\n"},
		{"Contact: sip:sipp@192.168.1.1", "tcp", "Contact: <sip:sipp@1.1.1.10:2222;transport=tcp>\r\n"},
		{"Contact: sips:sipp@192.168.1.1:5061", "udp", "Contact: <sip:sipp@1.1.1.10:2222;transport=udp>\r\n"},
		// Nothing to convert: no brackets added, the loose parameter kept.
		{"Contact: sip:sipp@192.168.1.1:5070;transport=tcp", "tcp", "Contact: sip:sipp@1.1.1.10:2222;transport=tcp\r\n"},
		{"Contact: sip:sipp@192.168.1.1:5070", "udp", "Contact: sip:sipp@1.1.1.10:2222\r\n"},
		{"Contact: sip:a@192.168.1.1:5070, <sip:b@192.168.1.2;transport=udp>", "tls",
			"Contact: <sip:a@1.1.1.10:2222;transport=tls>, <sip:b@1.1.1.10:2223;transport=tls>\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.contact+" to "+tc.to, func(t *testing.T) {
			in := crlf("REGISTER sip:1.1.1.1 SIP/2.0\nVia: SIP/2.0/UDP 1.1.1.9:5060;branch=z9hG4bK1\n" +
				"To: <sip:a@1.1.1.1>\nFrom: <sip:a@1.1.1.1>;tag=1\nCall-ID: bare\nCSeq: 1 REGISTER\n" + tc.contact + "\nContent-Length: 0\n\n")
			r := rewriteConverting(t, in, tc.to)
			if !strings.Contains(string(r.Out), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, r.Out)
			}
			var again Message
			if err := Parse(r.Out, &again); err != nil {
				t.Errorf("output does not parse: %v", err)
			}
		})
	}
}
