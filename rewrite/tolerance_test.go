package rewrite

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// The classes of issue 16 that live in rewrite: what sipcar does not need to understand is
// carried, SDP as phones write it, trickle-ICE and WebRTC placeholders anchored, multicast left
// alone. Every message here is written for its row.

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

// sdpMessage wraps an SDP body in an INVITE from side from (its Via and Contact on that side).
func sdpMessage(from Side, sdp string) []byte {
	addr := "192.168.1.1:2000"
	if from == Outside {
		addr = "1.1.1.2:5060"
	}
	return []byte("INVITE sip:bob@1.1.1.1 SIP/2.0\r\nVia: SIP/2.0/UDP " + addr + ";branch=z9hG4bK1\r\n" +
		"From: <sip:a@1.1.1.1>;tag=1\r\nTo: <sip:b@1.1.1.1>\r\nCall-ID: sdp\r\nCSeq: 1 INVITE\r\n" +
		"Contact: <sip:a@" + addr + ">\r\nContent-Type: application/sdp\r\n" +
		fmt.Sprintf("Content-Length: %d\r\n\r\n", len(sdp)) + sdp)
}

// rewriteSDP rewrites sdpMessage(from, sdp) with a fresh translator.
func rewriteSDP(t *testing.T, from Side, sdp string) (*Result, *natTranslator) {
	t.Helper()
	var m Message
	if err := Parse(sdpMessage(from, sdp), &m); err != nil {
		t.Fatal(err)
	}
	var r Result
	nat := newNAT()
	if err := Rewrite(&r, &m, from, nat); err != nil {
		t.Fatalf("refused: %v", err)
	}
	checkInvariants(t, "", m.Bytes(), &r)
	if from == Inside {
		if leak := insideLeaks(r.Out, testInsideNets); leak != "" {
			t.Errorf("inside address left in %s", leak)
		}
	}
	return &r, nat
}

const sdpHead = "v=0\r\no=- 1 1 IN IP4 192.168.1.1\r\ns=-\r\nc=IN IP4 192.168.1.1\r\nt=0 0\r\n"

// SDP lines that are not <type>=<value>, of unknown types or oddly spaced are carried byte for
// byte; what sipcar recognises around them is rewritten, and the call goes through.
func TestSDPLinesKept(t *testing.T) {
	tests := []struct {
		name, sdp string
		kept      []string // lines that must come out as they went in
		rewritten []string // and what must be in the output
	}{
		{"stray =extmap line", sdpHead + "m=audio 3000 RTP/AVP 0\r\n =extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=sendrecv\r\n",
			[]string{"\r\n =extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"}, []string{"m=audio 3334 RTP/AVP 0\r\n"}},
		{"line of text between streams", sdpHead + "m=audio 3000 RTP/AVP 0\r\nsoftphone says hello\r\nm=video 3002 RTP/AVP 96\r\n",
			[]string{"\r\nsoftphone says hello\r\n"}, []string{"m=audio 3334 RTP/AVP 0\r\n", "m=video 3336 RTP/AVP 96\r\n"}},
		{"line without =", sdpHead + "m=audio 3000 RTP/AVP 0\r\nartpmap:0 PCMU/8000\r\n", []string{"\r\nartpmap:0 PCMU/8000\r\n"}, []string{"m=audio 3334"}},
		{"line of only =", sdpHead + "=\r\nm=audio 3000 RTP/AVP 0\r\n", []string{"\r\n=\r\n"}, []string{"m=audio 3334"}},
		{"unknown types", sdpHead + "x=vendor\r\ny=\r\nZ=upper\r\nm=audio 3000 RTP/AVP 0\r\nq=what\r\n", []string{"\r\nx=vendor\r\ny=\r\nZ=upper\r\n", "\r\nq=what\r\n"}, []string{"m=audio 3334"}},
		{"multiple spaces and tabs", "v=0\r\no=- 1 1 IN IP4 192.168.1.1\r\ns=-\r\nc=IN\tIP4  192.168.1.1\r\nt=0 0\r\nm=audio\t3000   RTP/AVP 0\r\na=rtcp:  3001\r\n",
			nil, []string{"c=IN\tIP4  1.1.1.10\r\n", "m=audio\t3334   RTP/AVP 0\r\n", "a=rtcp:  3335\r\n"}},
		{"trailing white space", "v=0 \r\no=- 1 1 IN IP4 192.168.1.1 \r\ns=-\r\nc=IN IP4 192.168.1.1\t\r\nt=0 0\r\nm=audio 3000 RTP/AVP 0 \r\n",
			[]string{"v=0 \r\n"}, []string{"o=- 1 1 IN IP4 1.1.1.10 \r\n", "c=IN IP4 1.1.1.10\t\r\n", "m=audio 3334 RTP/AVP 0 \r\n"}},
		{"space after =", "v=0\r\no= - 1 1 IN IP4 192.168.1.1\r\ns=-\r\nc= IN IP4 192.168.1.1\r\nt=0 0\r\nm= audio 3000 RTP/AVP 0\r\n",
			nil, []string{"o= - 1 1 IN IP4 1.1.1.10\r\n", "c= IN IP4 1.1.1.10\r\n", "m= audio 3334 RTP/AVP 0\r\n"}},
		{"attribute name spaced", sdpHead + "m=audio 3000 RTP/AVP 0\r\na= rtcp :3001\r\na=rtcp-mux \r\n", nil, []string{"a= rtcp :3335\r\n"}},
		{"blank lines", sdpHead + "\r\n \r\nm=audio 3000 RTP/AVP 0\r\n\r\n", []string{"t=0 0\r\n\r\n \r\nm="}, []string{"m=audio 3334 RTP/AVP 0\r\n\r\n"}},
		{"ICE attribute that is not <type>=<value>, removed", sdpHead + "m=audio 3000 RTP/AVP 0\r\n a=candidate:1 1 udp 1 192.168.1.1 3000 typ host\r\na=sendrecv\r\n",
			nil, []string{"m=audio 3334 RTP/AVP 0\r\na=sendrecv\r\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := rewriteSDP(t, Inside, tc.sdp)
			for _, s := range append(tc.kept, tc.rewritten...) {
				if !bytes.Contains(r.Out, []byte(s)) {
					t.Errorf("output lacks %q:\n%s", s, r.Out)
				}
			}
			for _, s := range r.Streams {
				if s.Disposition != Relayed {
					t.Errorf("stream %d %v, want relayed", s.Index, s.Disposition)
				}
			}
			for _, e := range r.Edits {
				for _, k := range tc.kept {
					if bytes.Contains(e.Old, []byte(strings.TrimSpace(k))) {
						t.Errorf("kept line edited: %+v", e)
					}
				}
			}
		})
	}
}

// What cannot be rewritten safely is refused with the number of its line in the body, which the
// relay sends back in a Warning.
func TestSDPErrorNamesLine(t *testing.T) {
	tests := []struct {
		sdp, where, reason string
	}{
		{sdpHead + "m=audio 3000 RTP/AVP 0\r\n c=IN IP4 192.168.1.1\r\n", "SDP", "line 7: not <type>=<value>, yet readable as c="},
		{sdpHead + "m=audio 3000 RTP/AVP 0\r\na =rtcp:3001\r\n", "SDP", "line 7: not <type>=<value>, yet readable as a=rtcp"},
		{sdpHead + "m=audio x RTP/AVP 0\r\n", "SDP m=", "line 6: port is not"},
		{"v=0\r\n\r\ns=-\r\nc=IN IP4 192.168.1.1 x\r\n", "SDP c=", "line 4: not <nettype>"},
		{"v=0\r\nm=audio 3000 RTP/AVP 0\r\n", "SDP c=", "line 2: media description without a connection address"},
		{"\r\nhello\r\nv=0\r\n", "SDP", "line 2: does not start with v="},
		{sdpHead + "m=audio 3000 RTP/AVP 0\r\na=rtcp:3001\r\na=rtcp:3003\r\n", "SDP a=rtcp", "line 8: more than one a=rtcp"},
	}
	for _, tc := range tests {
		var m Message
		if err := Parse(sdpMessage(Inside, tc.sdp), &m); err != nil {
			t.Fatal(err)
		}
		var r Result
		err := Rewrite(&r, &m, Inside, newNAT())
		var perr *Error
		if !errors.As(err, &perr) || perr.Where != tc.where || !strings.HasPrefix(perr.Reason, tc.reason) {
			t.Errorf("%q: got %v, want %s: %s...", tc.sdp, err, tc.where, tc.reason)
		}
	}
}

// A trickle-ICE or WebRTC stream (c= the unspecified address, m= port 9, ICE or DTLS) is anchored
// like any other: relay ports, fingerprint and setup kept, ICE removed; its peer is the default
// candidate or, without one, unknown until its first packets. Without those signs, c=0.0.0.0 is
// still the RFC 2543 hold.
func TestPlaceholder(t *testing.T) {
	ap := netip.MustParseAddrPort
	unknown4 := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	unknown6 := netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	const (
		ice    = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
		dtls   = "a=fingerprint:sha-256 49:66:12:17\r\na=setup:actpass\r\n"
		host   = "a=candidate:1 1 udp 2122260223 192.168.1.1 46243 typ host\r\n"
		mdns   = "a=candidate:2 1 udp 2122260224 6f3c9a1e.local 54401 typ host\r\n"
		srflx  = "a=candidate:3 1 udp 1686052607 203.0.113.77 40000 typ srflx raddr 192.168.1.1 rport 46243\r\n"
		relay  = "a=candidate:4 1 udp 41885439 198.51.100.9 3478 typ relay raddr 203.0.113.77 rport 40000\r\n"
		srflx2 = "a=candidate:3 2 udp 1686052606 203.0.113.77 40001 typ srflx raddr 192.168.1.1 rport 46244\r\n"
		tcp    = "a=candidate:5 1 tcp 2122260225 192.168.1.1 9 typ host tcptype active\r\n"
		head   = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
	)
	tests := []struct {
		name     string
		from     Side
		sdp      string
		want     Disposition
		rtp      netip.AddrPort
		rtcp     netip.AddrPort
		inOutput []string
	}{ // Every row but the last three is a placeholder.
		{"no candidates yet", Inside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n" + ice + dtls + "a=rtcp-mux\r\n",
			Relayed, unknown4, unknown4, []string{"m=audio 3334 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 1.1.1.10\r\n" + dtls + "a=rtcp-mux\r\n"}},
		{"from outside, server reflexive first", Outside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n" + host + srflx + relay + ice + "a=rtcp-mux\r\n",
			Relayed, ap("203.0.113.77:40000"), ap("203.0.113.77:40000"), []string{"m=audio 5334 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 192.168.1.254\r\na=rtcp-mux\r\n"}},
		{"from inside, host first", Inside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n" + srflx + host + ice + "a=rtcp-mux\r\n",
			Relayed, ap("192.168.1.1:46243"), ap("192.168.1.1:46243"), []string{"c=IN IP4 1.1.1.10\r\na=rtcp-mux\r\n"}},
		{"from inside, host candidate is a name", Inside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n" + mdns + srflx + tcp + ice,
			Relayed, ap("203.0.113.77:40000"), ap("203.0.113.77:40001"), []string{"m=audio 3334 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 1.1.1.10\r\n"}},
		{"only relayed and TCP candidates", Outside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n" + relay + tcp + ice,
			Relayed, unknown4, unknown4, []string{"m=audio 5334 "}},
		{"RTCP from component 2", Outside, head + "m=audio 9 RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n" + srflx + srflx2 + ice,
			Relayed, ap("203.0.113.77:40000"), ap("203.0.113.77:40001"), []string{"m=audio 5334 RTP/SAVPF 111\r\nc=IN IP4 192.168.1.254\r\na=rtcp:5335 IN IP4 192.168.1.254\r\n"}},
		{"RTCP at RTP + 1 without component 2", Outside, head + "m=audio 9 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n" + srflx + ice,
			Relayed, ap("203.0.113.77:40000"), ap("203.0.113.77:40001"), []string{"m=audio 5334 RTP/AVP 0\r\n"}},
		{"IPv6", Inside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP6 ::\r\n" + ice + "a=rtcp-mux\r\n",
			Relayed, unknown6, unknown6, []string{"m=audio 3334 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP6 2001:db8:b::10\r\n"}},
		{"session-level c= and ICE options", Inside, "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=ice-options:trickle\r\nm=audio 9 RTP/AVP 0\r\n",
			Relayed, unknown4, unknown4, []string{"c=IN IP4 1.1.1.10\r\nt=0 0\r\nm=audio 3334 RTP/AVP 0\r\n"}},
		{"DTLS transport alone", Inside, head + "m=audio 9 UDP/TLS/RTP/SAVP 0\r\nc=IN IP4 0.0.0.0\r\n" + dtls,
			Relayed, unknown4, unknown4, []string{"m=audio 3334 UDP/TLS/RTP/SAVP 0\r\nc=IN IP4 1.1.1.10\r\n" + dtls}},
		{"placeholder sendonly is relayed", Inside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n" + ice + "a=sendonly\r\n",
			Relayed, unknown4, unknown4, []string{"m=audio 3334 "}},
		{"placeholder inactive is held", Inside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n" + ice + "a=inactive\r\n",
			Held, unknown4, unknown4, []string{"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=inactive\r\n"}},
		{"port 9 without ICE or DTLS is a hold", Inside, head + "m=audio 9 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n",
			Held, ap("0.0.0.0:9"), ap("0.0.0.0:10"), []string{"m=audio 9 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n"}},
		{"ICE with a real port is a hold", Inside, head + "m=audio 3000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n" + ice,
			Held, ap("0.0.0.0:3000"), ap("0.0.0.0:3001"), []string{"m=audio 3000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n"}},
		{"a real address at port 9 is an ordinary stream", Inside, head + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 192.168.1.1\r\n" + ice,
			Relayed, ap("192.168.1.1:9"), ap("192.168.1.1:10"), []string{"m=audio 3334 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 1.1.1.10\r\n"}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, nat := rewriteSDP(t, tc.from, tc.sdp)
			if len(r.Streams) != 1 {
				t.Fatalf("streams %+v", r.Streams)
			}
			s := r.Streams[0]
			placeholder := i < len(tests)-3
			if s.Disposition != tc.want || s.RTP != tc.rtp || s.RTCP != tc.rtcp || s.Placeholder != placeholder {
				t.Errorf("stream %v RTP %v RTCP %v placeholder %v; want %v RTP %v RTCP %v placeholder %v",
					s.Disposition, s.RTP, s.RTCP, s.Placeholder, tc.want, tc.rtp, tc.rtcp, placeholder)
			}
			if (tc.want == Relayed) != (len(nat.media) == 1) {
				t.Errorf("translator gave %d media bindings", len(nat.media))
			}
			for _, want := range tc.inOutput {
				if !bytes.Contains(r.Out, []byte(want)) {
					t.Errorf("output lacks %q:\n%s", want, r.Out)
				}
			}
			if tc.want == Relayed {
				for _, gone := range []string{"a=candidate", "a=ice-", " 0.0.0.0", "IP6 ::\r"} {
					if bytes.Contains(r.Out, []byte(gone)) {
						t.Errorf("output still has %q:\n%s", gone, r.Out)
					}
				}
			}
		})
	}
}

// A multicast session's addresses are the group's, not anyone's on one side: they are left as
// they are, the translator is not asked about them, and the stream is not relayed. The origin
// (a unicast address) is still translated.
func TestMulticastKept(t *testing.T) {
	tests := []struct {
		name, sdp string
		kept      []string
	}{
		{"IPv4 with TTL at session level", "v=0\r\no=- 1 1 IN IP4 192.168.1.1\r\ns=-\r\nc=IN IP4 224.2.17.12/127\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n",
			[]string{"c=IN IP4 224.2.17.12/127\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n"}},
		{"IPv4 with TTL and count in the media", "v=0\r\no=- 1 1 IN IP4 192.168.1.1\r\ns=-\r\nt=0 0\r\nm=video 51372/2 RTP/AVP 99\r\nc=IN IP4 233.252.0.1/127/2\r\na=rtcp:53000 IN IP4 233.252.0.1\r\n",
			[]string{"m=video 51372/2 RTP/AVP 99\r\nc=IN IP4 233.252.0.1/127/2\r\na=rtcp:53000 IN IP4 233.252.0.1\r\n"}},
		{"IPv4 without TTL", "v=0\r\no=- 1 1 IN IP4 192.168.1.1\r\ns=-\r\nc=IN IP4 239.1.2.3\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n",
			[]string{"c=IN IP4 239.1.2.3\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n"}},
		{"IPv6", "v=0\r\no=- 1 1 IN IP4 192.168.1.1\r\ns=-\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\nc=IN IP6 ff15::101\r\n",
			[]string{"m=audio 5004 RTP/AVP 0\r\nc=IN IP6 ff15::101\r\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, nat := rewriteSDP(t, Inside, tc.sdp)
			for _, k := range tc.kept {
				if !bytes.Contains(r.Out, []byte(k)) {
					t.Errorf("output lacks %q:\n%s", k, r.Out)
				}
			}
			if !bytes.Contains(r.Out, []byte("o=- 1 1 IN IP4 1.1.1.10\r\n")) {
				t.Errorf("origin not translated:\n%s", r.Out)
			}
			if len(r.Streams) != 1 || r.Streams[0].Disposition != NotRelayed || len(nat.media) != 0 {
				t.Errorf("streams %+v, %d bindings", r.Streams, len(nat.media))
			}
			for _, a := range nat.translated {
				if a.AddrPort.Addr().IsMulticast() {
					t.Errorf("translator asked about %v", a.AddrPort)
				}
			}
		})
	}
}
