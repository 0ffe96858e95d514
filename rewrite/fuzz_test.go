package rewrite

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// fuzzSeeds adds every message under testdata as a seed.
func fuzzSeeds(f *testing.F, each func(f *testing.F, msg []byte)) {
	for _, glob := range []string{"testdata/canonical/*.in", "testdata/cases/*.in", "testdata/torture/*/*.dat"} {
		files, _ := filepath.Glob(glob)
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			each(f, b)
		}
	}
}

// sipgoParses reports whether sipgo parses b; a panic in sipgo counts as no.
func sipgoParses(b []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	_, err := sip.ParseMessage(b)
	return err == nil
}

// checkRewrite is the property every input must satisfy: no panic; an input that does not
// parse gives an *Error; where it parsed, the rewrite succeeds (the fuzz translator never
// fails), the output parses wherever the input did, no inside address is left in a message from
// inside, and undoing the reported edits gives the input back.
func checkRewrite(t *testing.T, in []byte, from Side) {
	var m Message
	if err := Parse(in, &m); err != nil {
		var perr *Error
		if !errors.As(err, &perr) {
			t.Fatalf("Parse returned %T %v, want *Error", err, err)
		}
		return
	}
	var r Result
	nat := newNAT()
	if err := Rewrite(&r, &m, from, nat); err != nil {
		var perr *Error
		if !errors.As(err, &perr) {
			t.Fatalf("Rewrite failed with a translator that never fails: %v", err)
		}
		return
	}
	if undone := undo(&r); !bytes.Equal(undone, m.Bytes()) {
		t.Fatalf("undoing the edits does not give the input back:\n%q\nwant\n%q", undone, m.Bytes())
	}
	var out Message
	if err := Parse(r.Out, &out); err != nil {
		t.Fatalf("output does not parse: %v\n%q", err, r.Out)
	}
	if sipgoParses(m.Bytes()) && !sipgoParses(r.Out) {
		t.Fatalf("sipgo parses the input but not the output:\n%q", r.Out)
	}
	if from == Inside {
		if leak := insideLeaks(r.Out, nat.insideNets); leak != "" {
			t.Fatalf("inside address left in %s:\n%q", leak, r.Out)
		}
	}
}

func FuzzRewriteSIP(f *testing.F) {
	fuzzSeeds(f, func(f *testing.F, b []byte) { f.Add(b, true); f.Add(b, false) })
	f.Fuzz(func(t *testing.T, in []byte, fromInside bool) {
		from := Outside
		if fromInside {
			from = Inside
		}
		checkRewrite(t, in, from)
	})
}

// sdpEnvelope is a request that carries the fuzzed SDP.
const sdpEnvelope = "INVITE sip:bob@1.1.1.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.1:2000;branch=z9hG4bK1\r\n" +
	"To: <sip:bob@1.1.1.1>\r\nFrom: <sip:alice@1.1.1.1>;tag=1\r\nCall-ID: fuzz\r\nCSeq: 1 INVITE\r\n" +
	"Content-Type: application/sdp\r\n\r\n"

func FuzzRewriteSDP(f *testing.F) {
	fuzzSeeds(f, func(f *testing.F, b []byte) {
		var m Message
		if Parse(b, &m) == nil && bytes.HasPrefix(m.Body(), []byte("v=")) {
			f.Add(m.Body())
		}
	})
	f.Add([]byte("v=0\no=- 1 1 in ip4 192.168.1.1\ns=-\nt=0 0\nc=IN IP4 192.168.1.1\nm=audio 3000 RTP/AVP 0\na=rtcp:3001 IN IP4 192.168.1.1"))
	f.Fuzz(func(t *testing.T, sdp []byte) {
		msg := append([]byte(sdpEnvelope), sdp...)
		checkRewrite(t, msg, Inside)
		// A body the rewriter accepted must have had every address it names translated, and
		// every stream the rewriter relayed must have been given the binding it reports.
		var m Message
		var r Result
		if Parse(msg, &m) != nil || Rewrite(&r, &m, Inside, newNAT()) != nil {
			return
		}
		for _, s := range r.Streams {
			if s.Disposition == Relayed && (!s.Binding.RTP.IsValid() || s.Binding.RTP.Addr() != netip.MustParseAddr("1.1.1.10") && s.Binding.RTP.Addr() != netip.MustParseAddr("2001:db8:b::10")) {
				t.Fatalf("relayed stream with binding %v", s.Binding)
			}
		}
	})
}
