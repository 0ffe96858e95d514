package rewrite

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

// Each case is one message from inside, rewritten with a fresh translator and compared with its
// golden file; the checks say what the case is about, so that a wrong golden file cannot pass.
func TestCases(t *testing.T) {
	ap := netip.MustParseAddrPort
	contains := func(sub ...string) func(*testing.T, *Result) {
		return func(t *testing.T, r *Result) {
			t.Helper()
			for _, s := range sub {
				if !bytes.Contains(r.Out, []byte(s)) {
					t.Errorf("output lacks %q", s)
				}
			}
		}
	}
	lacks := func(sub ...string) func(*testing.T, *Result) {
		return func(t *testing.T, r *Result) {
			t.Helper()
			for _, s := range sub {
				if bytes.Contains(r.Out, []byte(s)) {
					t.Errorf("output still has %q", s)
				}
			}
		}
	}
	all := func(fs ...func(*testing.T, *Result)) func(*testing.T, *Result) {
		return func(t *testing.T, r *Result) {
			t.Helper()
			for _, f := range fs {
				f(t, r)
			}
		}
	}
	tests := []struct {
		name  string
		check func(*testing.T, *Result)
	}{
		{"compact-forms", all(
			contains("\r\nv: SIP/2.0/UDP 1.1.1.10:2222;branch=z9hG4bK1;rport, SIP/2.0/TCP 1.1.1.10:2223;branch=z9hG4bK0\r\n",
				"\r\nm: <sip:alice@1.1.1.10:2222;transport=udp>;expires=60, sip:alice@1.1.1.10:2224;q=0.5\r\n",
				"\r\nX-Custom:  keep   me ,as,is\r\n", "\r\nSubject: folded\r\n  over two lines\r\n",
				"\r\nf: \"Alice, the 1st\" <sip:alice@1.1.1.1>;tag=1\r\n", "\r\nl: ", "a=x-unknown:192.168.1.1 stays"),
			lacks("Content-Length")),
		},
		{"folded-via-spaces", contains("Via  : SIP  /   2.0\r\n /UDP\r\n    1.1.1.10 : 2222 ;branch=z9hG4bK2 ;rport\r\n",
			"Via: SIP/2.0/UDP 10.0.0.5:5060 ;branch=x\r\n", "Contact:\r\n  <sip:alice@1.1.1.10:2222>\r\n")},
		{"route-rr-path", contains(
			"Via: SIP/2.0/UDP 1.1.1.10:2222;branch=z9hG4bK3;received=1.1.1.10;rport=2223\r\n",
			"Via: SIP/2.0/UDP 1.1.1.10:2223;branch=z9hG4bK2;maddr=1.1.1.10\r\n",
			"Path: <sip:1.1.1.10:2222;lr>", "Record-Route: <sip:1.1.1.10:2222;lr>, <sip:edge.example.com;lr>",
			"Route: <sip:1.1.1.1;lr>", "Contact: <sip:alice@1.1.1.10:2223>;expires=3600", "Contact: *\r\n")},
		{"ipv6", all(contains("Via: SIP/2.0/UDP [2001:db8:b::10]:2222;branch=z9hG4bK6;received=2001:db8:b::10;rport=2222",
			"Contact: <sip:alice@[2001:db8:b::10]:2223>", "c=IN IP6 2001:db8:b::10", "a=rtcp:3335 IN IP6 2001:db8:b::10"),
			func(t *testing.T, r *Result) {
				wantStreams(t, r, Stream{Media: "audio", Proto: "RTP/AVP", RTP: ap("[2001:db8:a::1]:3000"), RTCP: ap("[2001:db8:a::1]:3001"),
					Disposition: Relayed, Binding: MediaBinding{RTP: ap("[2001:db8:b::10]:3334"), RTCPPort: 3335}})
			})},
		{"sdp-streams", all(
			contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n",
				"b=AS:2000\r\nt=0 0\r\nm=audio 3334 RTP/SAVP 0\r\nb=TIAS:64000\r\na=rtcp:3335\r\n",
				"m=video 3336 RTP/AVP 96\r\na=rtcp-mux\r\na=rtcp:3336\r\n", "m=video 0 RTP/AVP 97\r\n",
				"m=audio 3004 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n", "m=audio 3006 RTP/AVP 0\r\na=inactive\r\n",
				"m=message 2855 TCP/MSRP *\r\nc=IN IP4 1.1.1.10\r\n", "m=image 3338 udptl t38\r\n"),
			lacks("candidate", "ice-"),
			func(t *testing.T, r *Result) {
				want := []Disposition{Relayed, Relayed, Rejected, Held, Held, NotRelayed, Relayed}
				for i, s := range r.Streams {
					if i < len(want) && s.Disposition != want[i] {
						t.Errorf("stream %d (%s %s): %v, want %v", i, s.Media, s.Proto, s.Disposition, want[i])
					}
				}
				if len(r.Streams) != len(want) || !r.Streams[1].Mux || r.Streams[1].RTCP != r.Streams[1].RTP {
					t.Errorf("streams %+v", r.Streams)
				}
			})},
		{"multipart", all(contains("Content-Type: application/sdp\r\n\r\nv=0\r\no=- 8 8 IN IP4 1.1.1.10\r\ns=-\r\nc=IN IP4 1.1.1.10\r\nt=0 0\r\nm=audio 3334 RTP/AVP 0\r\n\r\n--unique-boundary-1\r\n",
			"192.168.1.1 is opaque bytes here\r\n--unique-boundary-1--"))},
		{"lf-only", contains("\nVia: SIP/2.0/UDP 1.1.1.10:2222;branch=z9hG4bK9\n", "\nc=IN IP4 1.1.1.10\nt=0 0\nm=audio 3334 RTP/AVP 0")},
		{"no-content-length", contains("Content-Type: application/sdp\r\nContent-Length: 85\r\n\r\nv=0")},
		{"sipgo-bugs", contains("Via: SIP/2.0/UDP 1.1.1.10:2222 ;branch=z9hG4bK11\r\n",
			"Via: SIP/2.0/UDP 1.1.1.10:2223, SIP/2.0/UDP 1.1.1.10:2224\r\n",
			"Via: SIP/2.0/UDP 1.1.1.10:2225;rport , SIP/2.0/UDP 1.1.1.10:2226;branch=z9hG4bK5\r\n",
			"Contact: <sip:a@1.1.1.10:2222;lr?X=y>")},
		// Issue 16: what sipcar does not need to understand is carried.
		{"masked-addresses", all(
			contains("INVITE sip:bob@00.000.00.0 SIP/2.0\r\n",
				"Via: SIP/2.0/UDP 1.1.1.10:2222;branch=z9hG4bK1;rport\r\n",
				"Via: SIP/2.0/UDP 00.000.00.0:5060;branch=z9hG4bK0;received=00.000.00.0\r\n",
				"From: \"Alice (masked)\" <sip:alice@00.000.00.0>;tag=a73kszlfl\r\n", "To: sip:bob@00.000.00.0:5060\r\n",
				"Contact: <sip:alice@1.1.1.10:2222>, <sip:alice@192.168.001.010:5062>\r\n",
				"X-Odd-URI: <sip:a b@[not an address>\r\n", "c=IN IP4 1.1.1.10\r\n"),
			func(t *testing.T, r *Result) {
				for _, e := range r.Edits {
					if bytes.Contains(e.Old, []byte("00.0")) || bytes.Contains(e.Old, []byte("001.010")) {
						t.Errorf("masked host edited: %+v", e)
					}
				}
			})},
		{"sdp-as-written", all(
			contains("o=Softphone 2023 1  IN  IP4  1.1.1.10\r\n", "c=IN IP4   1.1.1.10\r\n", "x-softphone=build 5.6\r\n",
				"m=audio  3334  RTP/AVP 0 8 101\r\n", "\r\n =extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n",
				"a= rtcp :3335\r\n", "m=video 3336 RTP/AVP 96\r\nc=IN IP4 1.1.1.10 \r\n",
				"\r\nthis line is not an SDP line at all\r\n", "m=text 3338 RTP/AVP 98\r\nY=an upper-case type\r\n"),
			func(t *testing.T, r *Result) {
				wantDispositions(t, r, Relayed, Relayed, Relayed)
			})},
		{"trickle-ice", all(
			contains("m=audio 3334 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 1.1.1.10\r\na=rtcp:3334 IN IP4 1.1.1.10\r\na=fingerprint:sha-256 ",
				"a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n",
				"m=video 3336 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 1.1.1.10\r\na=rtcp:3336 IN IP4 1.1.1.10\r\n",
				"m=application 3338 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 1.1.1.10\r\na=fingerprint",
				"a=group:BUNDLE 0 1 2\r\n", "a=sctp-port:5000\r\n"),
			lacks("0.0.0.0", " 9 UDP", "candidate", "ice-", "192.168.1.1 "),
			func(t *testing.T, r *Result) {
				unknown := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
				wantStreams(t, r,
					// From inside: the host candidate with an address (the mDNS one is a name).
					Stream{Media: "audio", Proto: "UDP/TLS/RTP/SAVPF", RTP: ap("192.168.1.1:46243"), RTCP: ap("192.168.1.1:46243"), Mux: true,
						Placeholder: true, Disposition: Relayed, Binding: MediaBinding{RTP: ap("1.1.1.10:3334"), RTCPPort: 3335}},
					Stream{Index: 1, Media: "video", Proto: "UDP/TLS/RTP/SAVPF", RTP: unknown, RTCP: unknown, Mux: true, Direction: RecvOnly,
						Placeholder: true, Disposition: Relayed, Binding: MediaBinding{RTP: ap("1.1.1.10:3336"), RTCPPort: 3337}},
					Stream{Index: 2, Media: "application", Proto: "UDP/DTLS/SCTP", RTP: unknown, RTCP: unknown,
						Placeholder: true, Disposition: Relayed, Binding: MediaBinding{RTP: ap("1.1.1.10:3338"), RTCPPort: 3339}})
			})},
		// RFC 8840: candidates trickled in an INFO after sipcar removed ICE from the call's SDP.
		{"trickle-info", all(
			contains("Content-Type: application/trickle-ice-sdpfrag\r\nContent-Disposition: Info-Package\r\nContent-Length: 42\r\n\r\n"+
				"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n", "Info-Package: trickle-ice\r\n"),
			lacks("candidate", "ice-ufrag", "ice-pwd", "192.168.1.1")),
		},
		{"trickle-info-multipart", all(
			contains("Content-Type: application/trickle-ice-sdpfrag\r\nContent-Length: 42\r\n\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\r\n--b1\r\n",
				"192.168.1.1 is opaque bytes here\r\n--b1--"),
			lacks("candidate")),
		},
		{"multicast", all(
			contains("o=- 1 1 IN IP4 1.1.1.10\r\n", "c=IN IP4 224.2.17.12/127\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtcp:49171 IN IP4 224.2.17.12\r\n",
				"m=video 51372 RTP/AVP 99\r\nc=IN IP6 ff15::101\r\n", "m=audio 3334 RTP/AVP 0\r\nc=IN IP4 1.1.1.10\r\n"),
			func(t *testing.T, r *Result) {
				wantDispositions(t, r, NotRelayed, NotRelayed, Relayed)
			})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runScenario(t, "cases", newNAT(), []step{{name: tc.name, from: Inside, check: tc.check}})
		})
	}
}

// Every edit the rewriter reports names its field; none crosses another.
func TestEditsAreOrderedAndDisjoint(t *testing.T) {
	var m Message
	var r Result
	in := []byte(strings.ReplaceAll("INVITE sip:b@1.1.1.1 SIP/2.0\nVia: SIP/2.0/UDP 192.168.1.1;branch=z9hG4bK1\nTo: <sip:b@1.1.1.1>\nFrom: <sip:a@1.1.1.1>;tag=1\nCall-ID: x\nCSeq: 1 INVITE\nContact: <sip:a@192.168.1.1>\nContent-Length: 0\n\n", "\n", "\r\n"))
	if err := Parse(in, &m); err != nil {
		t.Fatal(err)
	}
	if err := Rewrite(&r, &m, Inside, newNAT()); err != nil {
		t.Fatal(err)
	}
	if len(r.Edits) != 4 { // Via host and port (the port was implicit), Contact host and port
		t.Fatalf("edits %+v", r.Edits)
	}
	for i := 1; i < len(r.Edits); i++ {
		if r.Edits[i].Start < r.Edits[i-1].End {
			t.Errorf("edit %d starts at %d inside edit %d ending at %d", i, r.Edits[i].Start, i-1, r.Edits[i-1].End)
		}
	}
	if got := string(r.Out); !strings.Contains(got, "Via: SIP/2.0/UDP 1.1.1.10:2222;") || !strings.Contains(got, "<sip:a@1.1.1.10:2222>") {
		t.Errorf("implicit port not written: %s", got)
	}
}

func wantDispositions(t *testing.T, r *Result, want ...Disposition) {
	t.Helper()
	if len(r.Streams) != len(want) {
		t.Fatalf("%d streams, want %d: %+v", len(r.Streams), len(want), r.Streams)
	}
	for i, s := range r.Streams {
		if s.Disposition != want[i] {
			t.Errorf("stream %d (%s %s): %v, want %v", i, s.Media, s.Proto, s.Disposition, want[i])
		}
	}
}
