package rewrite

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
	"github.com/pion/sdp/v3"
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
	for _, s := range sdpSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		msg := append([]byte(sdpEnvelope), body...)
		checkRewrite(t, msg, Inside)
		// A body the rewriter accepted must have had every address it names translated, and
		// every stream the rewriter relayed must have been given the binding it reports.
		var m Message
		var r Result
		if Parse(msg, &m) != nil {
			return
		}
		err := Rewrite(&r, &m, Inside, newNAT())
		if err == nil {
			for _, s := range r.Streams {
				if s.Disposition == Relayed && (!s.Binding.RTP.IsValid() || s.Binding.RTP.Addr() != netip.MustParseAddr("1.1.1.10") && s.Binding.RTP.Addr() != netip.MustParseAddr("2001:db8:b::10")) {
					t.Fatalf("relayed stream with binding %v", s.Binding)
				}
			}
		}
		if msg := agreesWithPion(m.Body(), &m, &r, err); msg != "" {
			t.Fatalf("rewrite and pion/sdp disagree: %s\n%q", msg, m.Body())
		}
	})
}

// pionFaithful reports whether pion's reading of body is the body itself: marshalled back, it
// gives the same lines. Where it does not, pion has read something else than the lines say (it
// takes "" or "0" for an empty SDP, reads "v= o= 00 00 IN" as two lines and fills in an address
// the line lacks), and there is no reading of pion's to compare with.
func pionFaithful(in *sdp.SessionDescription, body []byte) bool {
	out, err := in.Marshal()
	if err != nil {
		return false
	}
	want := bytes.ReplaceAll(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	if !bytes.HasSuffix(want, []byte("\r\n")) {
		want = append(want, "\r\n"...)
	}
	return bytes.Equal(out, want)
}

// sdpSeeds are SDP shapes of issue 16, for FuzzRewriteSDP to start from.
var sdpSeeds = []string{
	"v=0\no=- 1 1 in ip4 192.168.1.1\ns=-\nt=0 0\nc=IN IP4 192.168.1.1\nm=audio 3000 RTP/AVP 0\na=rtcp:3001 IN IP4 192.168.1.1",
	// Lines that are not <type>=<value>, unknown types, odd spacing.
	"v=0\r\no=- 1 1 IN IP4 192.168.1.1\r\ns=-\r\nc=IN  IP4\t192.168.1.1 \r\nt=0 0\r\nx=vendor\r\nm=audio 3000 RTP/AVP 0\r\n =extmap:1 urn:x\r\nnot sdp\r\na= rtcp :3001\r\nm=video 3002 RTP/AVP 96\r\nm=text 3004 RTP/AVP 98\r\n",
	// A trickle-ICE WebRTC offer: placeholders, candidates, DTLS.
	"v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n" +
		"a=rtcp:9 IN IP4 0.0.0.0\r\na=candidate:1 1 udp 2122260223 192.168.1.1 46243 typ host\r\n" +
		"a=candidate:2 1 udp 1686052607 203.0.113.77 40000 typ srflx raddr 192.168.1.1 rport 46243\r\na=candidate:2 2 udp 1686052606 203.0.113.77 40001 typ srflx\r\n" +
		"a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\na=ice-options:trickle\r\na=fingerprint:sha-256 49:66\r\na=setup:actpass\r\na=mid:0\r\na=rtcp-mux\r\n" +
		"m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP6 ::\r\na=sctp-port:5000\r\n",
	// Multicast, IPv4 with TTL and count, IPv6.
	"v=0\r\no=- 1 1 IN IP4 192.168.1.1\r\ns=-\r\nc=IN IP4 224.2.17.12/127/2\r\nt=0 0\r\nm=audio 49170/2 RTP/AVP 0\r\nm=video 5004 RTP/AVP 99\r\nc=IN IP6 ff15::101\r\n",
}

// agreesWithPion checks the rewriter's reading of an SDP body against pion/sdp's, where pion
// parses it (pion refuses much that real devices send, which the rewriter carries): the same
// media descriptions with the same media, port and protocol, the same connection address in
// force for each, the same origin address. Where pion parses the input, it must parse the
// output too, with the same media. The rewriter may refuse what pion parses only for what it
// documents: a stream with a port and no c= (pion does not need one, the relay does), and what
// pion does not read (a=rtcp, a second c= at one level, which pion overwrites).
func agreesWithPion(body []byte, m *Message, r *Result, rerr error) string {
	var in sdp.SessionDescription
	if in.Unmarshal(body) != nil || !pionFaithful(&in, body) {
		return ""
	}
	if rerr != nil {
		var perr *Error
		if !errors.As(rerr, &perr) {
			return "rewrite failed: " + rerr.Error()
		}
		switch {
		case perr.Where == "SDP a=rtcp",
			perr.Where == "SDP c=" && (strings.Contains(perr.Reason, "without a connection address") || strings.Contains(perr.Reason, "more than one")):
			return ""
		}
		return "pion parses what rewrite refused: " + rerr.Error()
	}
	if len(r.parts) != 1 {
		return fmt.Sprintf("%d SDP parts", len(r.parts))
	}
	raw := m.Bytes()
	text := func(s span) string { return string(raw[s.start:s.end]) }
	p := &r.parts[0]
	// The rewriter reads an address followed by "/..." as that address in o= too, so that what a
	// lenient receiver would take for one is translated; pion keeps the whole field.
	if origin, _, _ := strings.Cut(in.Origin.UnicastAddress, "/"); text(p.origin.addr) != origin {
		return fmt.Sprintf("o= address %q, pion %q", text(p.origin.addr), in.Origin.UnicastAddress)
	}
	if len(r.media) != len(in.MediaDescriptions) {
		return fmt.Sprintf("%d media, pion %d", len(r.media), len(in.MediaDescriptions))
	}
	for i, md := range in.MediaDescriptions {
		mm := &r.media[i]
		if text(mm.media) != md.MediaName.Media || int(mm.portNum) != md.MediaName.Port.Value ||
			text(mm.proto) != strings.Join(md.MediaName.Protos, "/") {
			return fmt.Sprintf("m= %d: %s %d %s, pion %+v", i, text(mm.media), mm.portNum, text(mm.proto), md.MediaName)
		}
		ci, c := md.ConnectionInformation, &mm.c
		if ci == nil {
			ci, c = in.ConnectionInformation, &p.sessC
		}
		switch {
		case ci == nil || ci.Address == nil:
			if c.ok {
				return fmt.Sprintf("m= %d: c= %q, pion none", i, text(c.addr))
			}
		default:
			// pion keeps a multicast "/ttl/count" with the address.
			addr, _, _ := strings.Cut(ci.Address.Address, "/")
			if !c.ok || text(c.addr) != addr {
				return fmt.Sprintf("m= %d: c= %q (%v), pion %q", i, text(c.addr), c.ok, ci.Address.Address)
			}
		}
	}
	var out sdp.SessionDescription
	var om Message
	if Parse(r.Out, &om) != nil {
		return "output does not parse"
	}
	if err := out.Unmarshal(om.Body()); err != nil {
		return "pion parses the input but not the output: " + err.Error() + fmt.Sprintf("\n%q", om.Body())
	}
	if len(out.MediaDescriptions) != len(in.MediaDescriptions) {
		return "pion reads another number of media in the output"
	}
	for i, md := range out.MediaDescriptions {
		if md.MediaName.Media != in.MediaDescriptions[i].MediaName.Media {
			return "pion reads other media in the output"
		}
	}
	return ""
}

// The pion cross-check of FuzzRewriteSDP is not vacuous: pion parses the seeds written for it,
// they agree, and a reading that differs from pion's is caught.
func TestPionCrossCheck(t *testing.T) {
	for i, body := range sdpSeeds[1:] {
		var in sdp.SessionDescription
		if err := in.Unmarshal([]byte(body)); err != nil && i != 0 { // seed 1 has lines pion refuses
			t.Errorf("pion refuses seed %d: %v", i+1, err)
		}
	}
	body := []byte(sdpSeeds[2])
	var m Message
	var r Result
	if err := Parse(append([]byte(sdpEnvelope), body...), &m); err != nil {
		t.Fatal(err)
	}
	err := Rewrite(&r, &m, Inside, newNAT())
	if msg := agreesWithPion(m.Body(), &m, &r, err); msg != "" {
		t.Fatal(msg)
	}
	r.media[1].portNum++
	if agreesWithPion(m.Body(), &m, &r, err) == "" {
		t.Error("a different port went unnoticed")
	}
	r.media[1].portNum--
	r.media[0].c.addr.end--
	if agreesWithPion(m.Body(), &m, &r, err) == "" {
		t.Error("a different address went unnoticed")
	}
}
