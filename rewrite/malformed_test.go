package rewrite

import (
	"errors"
	"strings"
	"testing"
)

func crlf(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }

const okHead = "INVITE sip:bob@1.1.1.1 SIP/2.0\nVia: SIP/2.0/UDP 192.168.1.1:2000;branch=z9hG4bK1\nTo: <sip:bob@1.1.1.1>\nFrom: <sip:alice@1.1.1.1>;tag=1\nCall-ID: bad\nCSeq: 1 INVITE\n"

// Every malformed message is refused with an *Error naming the part that is wrong; the relay
// answers a request with 400 (505 for ErrVersion) and puts Reason in a Warning.
func TestMalformed(t *testing.T) {
	tests := []struct {
		name, msg string
		kind      error
		where     string
	}{
		{"empty", "", ErrMalformed, "start line"},
		{"only CRLFs", "\n\n", ErrMalformed, "start line"},
		{"no headers end", okHead, ErrMalformed, "headers"},
		{"garbage start line", "HELLO\n" + okHead[31:] + "\n", ErrMalformed, "start line"},
		{"version 3.0", strings.Replace(okHead, "SIP/2.0\n", "SIP/3.0\n", 1) + "\n", ErrVersion, "start line"},
		{"missing Call-ID", strings.Replace(okHead, "Call-ID: bad\n", "", 1) + "\n", ErrMalformed, "Call-ID"},
		{"missing Via", strings.Replace(okHead, "Via: SIP/2.0/UDP 192.168.1.1:2000;branch=z9hG4bK1\n", "", 1) + "\n", ErrMalformed, "Via"},
		{"Via without host", strings.Replace(okHead, "192.168.1.1:2000", "", 1) + "\n", ErrMalformed, "Via"},
		{"Via bad port", strings.Replace(okHead, ":2000", ":99999", 1) + "\n", ErrMalformed, "Via"},
		{"Via IPv4 of three parts", strings.Replace(okHead, "192.168.1.1", "192.168.1", 1) + "\n", ErrMalformed, "Via"},
		{"Via IPv4 of five parts", strings.Replace(okHead, "192.168.1.1", "192.168.1.1.1", 1) + "\n", ErrMalformed, "Via"},
		{"Via IPv4 octet of four digits", strings.Replace(okHead, "192.168.1.1", "192.168.1.0001", 1) + "\n", ErrMalformed, "Via"},
		{"Via IPv4 empty octet", strings.Replace(okHead, "192.168.1.1", "192.168..1", 1) + "\n", ErrMalformed, "Via"},
		{"To unterminated quote", strings.Replace(okHead, "To: <sip:bob@1.1.1.1>", "To: \"Bob <sip:bob@1.1.1.1>;tag=x", 1) + "\n", ErrMalformed, "To"},
		{"From without '>'", strings.Replace(okHead, "From: <sip:alice@1.1.1.1>;tag=1", "From: <sip:alice@1.1.1.1;tag=1", 1) + "\n", ErrMalformed, "From"},
		{"Via bad IPv6", strings.Replace(okHead, "192.168.1.1", "[2001:db8::zz]", 1) + "\n", ErrMalformed, "Via"},
		{"Contact unbalanced", okHead + "Contact: <sip:a@192.168.1.1\n\n", ErrMalformed, "Contact"},
		{"Route not in brackets", okHead + "Route: sip:1.1.1.1;lr\n\n", ErrMalformed, "Route"},
		{"header line without colon", okHead + "Bogus header\n\n", ErrMalformed, "headers"},
		{"Content-Length too large", okHead + "Content-Length: 10\n\nv=0\n", ErrMalformed, "Content-Length"},
		{"two Content-Lengths", okHead + "Content-Length: 0\nl: 0\n\n", ErrMalformed, "Content-Length"},
		{"SDP m= port", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 192.168.1.1\nm=audio 70000 RTP/AVP 0\n", ErrMalformed, "SDP m="},
		{"SDP m= too short", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 192.168.1.1\nm=audio 3000\n", ErrMalformed, "SDP m="},
		{"SDP c= fields", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4\nm=audio 3000 RTP/AVP 0\n", ErrMalformed, "SDP c="},
		{"SDP stream without c=", okHead + "Content-Type: application/sdp\n\nv=0\nm=audio 3000 RTP/AVP 0\n", ErrMalformed, "SDP c="},
		{"SDP a=rtcp", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 192.168.1.1\nm=audio 3000 RTP/AVP 0\na=rtcp:x\n", ErrMalformed, "SDP a=rtcp"},
		{"SDP not v= first", okHead + "Content-Type: application/sdp\n\nc=IN IP4 192.168.1.1\n", ErrMalformed, "SDP"},
		{"SDP garbage first line", okHead + "Content-Type: application/sdp\n\nthis is not sdp\nv=0\n", ErrMalformed, "SDP"},
		{"SDP c= with a space before it", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 1.1.1.1\nm=audio 3000 RTP/AVP 0\n c=IN IP4 192.168.1.1\n", ErrMalformed, "SDP"},
		{"SDP m= with a space before =", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 192.168.1.1\nm =audio 3000 RTP/AVP 0\n", ErrMalformed, "SDP"},
		{"SDP o= with a tab before it", okHead + "Content-Type: application/sdp\n\nv=0\n\to=- 1 1 IN IP4 192.168.1.1\n", ErrMalformed, "SDP"},
		{"SDP a=rtcp with spaces around =", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 192.168.1.1\nm=audio 3000 RTP/AVP 0\na = rtcp:3001\n", ErrMalformed, "SDP"},
		{"SDP bare CR", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 1.1.1.1\rc=IN IP4 192.168.1.1\nm=audio 3000 RTP/AVP 0\n", ErrMalformed, "SDP"},
		{"SDP two o=", okHead + "Content-Type: application/sdp\n\nv=0\no=- 1 1 IN IP4 192.168.1.1\no=- 1 1 IN IP4 1.1.1.10\nc=IN IP4 192.168.1.1\n", ErrMalformed, "SDP o="},
		{"SDP two session c=", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 192.168.1.1\nc=IN IP4 1.1.1.10\nm=audio 3000 RTP/AVP 0\n", ErrMalformed, "SDP c="},
		{"SDP two a=rtcp", okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 192.168.1.1\nm=audio 3000 RTP/AVP 0\na=rtcp:3001 IN IP4 192.168.1.1\na=rtcp:3003\n", ErrMalformed, "SDP a=rtcp"},
		{"SDP fragment bare CR", okHead + "Content-Type: application/trickle-ice-sdpfrag\n\nm=audio 9 RTP/AVP 0\na=mid:0\ra=candidate:1 1 UDP 1 192.168.1.1 5000 typ host\n", ErrMalformed, "SDP fragment"},
		{"gzip SDP", okHead + "Content-Type: application/sdp\nContent-Encoding: gzip\n\nv=0\n", ErrUnsupported, "body"},
		{"multipart without boundary", okHead + "Content-Type: multipart/mixed\n\n--x\n\nv=0\n--x--\n", ErrMalformed, "Content-Type"},
		{"multipart not closed", okHead + "Content-Type: multipart/mixed;boundary=x\n\n--x\nContent-Type: application/sdp\n\nv=0\n", ErrMalformed, "body"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m Message
			var r Result
			nat := newNAT()
			err := Parse(crlf(tc.msg), &m)
			if err == nil {
				err = Rewrite(&r, &m, Inside, nat)
			}
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("got %v, want an *Error", err)
			}
			if !errors.Is(err, tc.kind) || perr.Where != tc.where || perr.Reason == "" {
				t.Errorf("got %v (where %q), want kind %v where %q", err, perr.Where, tc.kind, tc.where)
			}
			if len(nat.translated) != 0 || len(nat.media) != 0 {
				t.Errorf("translator was asked %d addresses and %d streams before the error", len(nat.translated), len(nat.media))
			}
			if len(r.Out) != 0 {
				t.Errorf("output written for a refused message")
			}
		})
	}
}

// A translator that fails midway (the port range is exhausted on the second stream) makes
// Rewrite fail with its error and no output, so that the relay can roll back and answer 503.
func TestTranslatorFailureLeavesNoOutput(t *testing.T) {
	msg := crlf(okHead + "Content-Type: application/sdp\n\nv=0\nc=IN IP4 192.168.1.1\nm=audio 3000 RTP/AVP 0\nm=video 3002 RTP/AVP 96\n")
	var m Message
	var r Result
	if err := Parse(msg, &m); err != nil {
		t.Fatal(err)
	}
	nat := newNAT()
	nat.failMedia = errNoPorts
	err := Rewrite(&r, &m, Inside, nat)
	if !errors.Is(err, errNoPorts) {
		t.Fatalf("got %v, want the translator's error", err)
	}
	if len(r.Out) != 0 || len(r.Edits) != 0 {
		t.Errorf("output or edits left after a failed rewrite: %q", r.Out)
	}
	if len(nat.media) != 1 {
		t.Errorf("translator allocated %d streams, want 1 before failing (the caller rolls it back)", len(nat.media))
	}
}

// A side that is neither Inside nor Outside is refused, and so is a Message that Parse did not
// fill (the zero Message, or one whose Parse failed).
func TestRewriteRefusesMisuse(t *testing.T) {
	var m Message
	var r Result
	if err := Rewrite(&r, &m, Inside, newNAT()); err == nil {
		t.Error("zero Message accepted")
	}
	if err := Parse(crlf("INVITE x"), &m); err == nil {
		t.Fatal("bad message parsed")
	}
	if err := Rewrite(&r, &m, Inside, newNAT()); err == nil {
		t.Error("Message whose Parse failed accepted")
	}
	if err := Parse(crlf(okHead+"\n"), &m); err != nil {
		t.Fatal(err)
	}
	if err := Rewrite(&r, &m, 0, newNAT()); err == nil {
		t.Error("side 0 accepted")
	}
}
