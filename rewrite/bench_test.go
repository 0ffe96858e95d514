package rewrite

import (
	"net/netip"
	"os"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// benchInvite is a typical INVITE from a phone: about 1 KB, with a two-stream SDP.
func benchInvite(b *testing.B) []byte {
	msg, err := os.ReadFile("testdata/bench/invite.in")
	if err != nil {
		b.Fatal(err)
	}
	return msg
}

// fixedTranslator answers from precomputed bindings, as the server map does for a message whose
// bindings exist (a retransmission, or a call's later messages): the benchmark then measures the
// rewriter, not a map.
type fixedTranslator struct {
	sig   netip.AddrPort
	media netip.Addr
}

func (f *fixedTranslator) Translate(a Addr) (netip.AddrPort, bool, error) {
	if a.AddrPort.Port() == 0 {
		return netip.AddrPortFrom(f.media, 0), true, nil
	}
	return f.sig, true, nil
}

func (f *fixedTranslator) Media(_ Side, s *Stream) (MediaBinding, error) {
	p := 20000 + 2*uint16(s.Index)
	return MediaBinding{RTP: netip.AddrPortFrom(f.media, p), RTCPPort: p + 1}, nil
}

// BenchmarkRewriteInvite is everything the relay does to one message besides IO: parse and
// validate, read what call state needs (Call-ID, CSeq, tags, top Via), rewrite.
func BenchmarkRewriteInvite(b *testing.B) {
	msg := benchInvite(b)
	tr := &fixedTranslator{sig: netip.MustParseAddrPort("1.1.1.10:2222"), media: netip.MustParseAddr("1.1.1.10")}
	var m Message
	var r Result
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if err := Parse(msg, &m); err != nil {
			b.Fatal(err)
		}
		_ = m.CallID()
		_, _ = m.CSeq()
		_ = m.FromTag()
		_ = m.ToTag()
		_ = m.TopVia()
		if err := Rewrite(&r, &m, Inside, tr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRewriteWebRTCOffer is the same for a trickle-ICE WebRTC offer (testdata/cases): three
// placeholder streams, candidates read for the default one, ICE attributes removed.
func BenchmarkRewriteWebRTCOffer(b *testing.B) {
	msg, err := os.ReadFile("testdata/cases/trickle-ice.in")
	if err != nil {
		b.Fatal(err)
	}
	tr := &fixedTranslator{sig: netip.MustParseAddrPort("1.1.1.10:2222"), media: netip.MustParseAddr("1.1.1.10")}
	var m Message
	var r Result
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if err := Parse(msg, &m); err != nil {
			b.Fatal(err)
		}
		if err := Rewrite(&r, &m, Inside, tr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSipgoParse is sipgo's parse of the same bytes, the yardstick for the rewrite.
func BenchmarkSipgoParse(b *testing.B) {
	msg := benchInvite(b)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sip.ParseMessage(msg); err != nil {
			b.Fatal(err)
		}
	}
}
