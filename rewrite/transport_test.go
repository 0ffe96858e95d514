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
			var m Message
			var r Result
			if err := Parse(in, &m); err != nil {
				t.Fatal(err)
			}
			if err := Rewrite(&r, &m, Inside, convertingNAT{newNAT(), tc.to}); err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, "", m.Bytes(), &r)
			for _, w := range tc.want {
				if !strings.Contains(string(r.Out), w) {
					t.Errorf("output lacks %q:\n%s", w, r.Out)
				}
			}
		})
	}
}
