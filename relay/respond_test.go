package relay

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// headerValues returns the values of the header lines named name in a message sipcar built,
// folded lines kept folded.
func headerValues(msg, name string) []string {
	var vs []string
	head, _, _ := strings.Cut(msg, "\r\n\r\n")
	var lines []string
	for _, l := range strings.Split(head, "\r\n")[1:] {
		if len(lines) > 0 && (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) {
			lines[len(lines)-1] += "\r\n" + l
			continue
		}
		lines = append(lines, l)
	}
	for _, l := range lines {
		if n, v, ok := strings.Cut(l, ": "); ok && strings.EqualFold(n, name) {
			vs = append(vs, v)
		}
	}
	return vs
}

// RFC 3261 section 8.2.6 from the request's own bytes: Vias copied exactly (received and rport
// from the packet's source on the top one), From, Call-ID and CSeq copied, To with a tag added
// once.
func TestReply(t *testing.T) {
	src := netip.MustParseAddrPort("203.0.113.9:7000")
	tests := []struct {
		name    string
		req     string
		vias    []string
		to      string // "" : the request's To with sipcar's tag
		noReply bool
	}{
		{name: "plain",
			req:  "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2:5060;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 198.18.0.9;branch=z9hG4bK0\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n",
			vias: []string{"SIP/2.0/UDP 198.18.0.2:5060;branch=z9hG4bK1;received=203.0.113.9", "SIP/2.0/UDP 198.18.0.9;branch=z9hG4bK0"}},
		{name: "space before branch (sipgo loses host and branch)",
			req:  "OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060 ;branch=z9hG4bKsp\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c2\r\nCSeq: 1 OPTIONS\r\n\r\n",
			vias: []string{"SIP/2.0/UDP 10.0.0.5:5060 ;branch=z9hG4bKsp;received=203.0.113.9"}},
		{name: "rport filled, sent-by is the source",
			req:  "OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:5060;rport;branch=z9hG4bKr\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=u\r\nCall-ID: c3\r\nCSeq: 1 OPTIONS\r\n\r\n",
			vias: []string{"SIP/2.0/UDP 203.0.113.9:5060;rport=7000;branch=z9hG4bKr"}, to: "<sip:b@y>;tag=u"},
		{name: "compact forms, two via-parms in one header, folded",
			req: "REGISTER sip:x SIP/2.0\r\nv: SIP / 2.0 / UDP 198.18.0.2 ;branch=z9hG4bKc, SIP/2.0/TCP\r\n 198.18.0.3;branch=z9hG4bKd\r\n" +
				"f: sip:a@x;tag=9\r\nt: \"B, b\" <sip:b@x;tag=inuri>\r\ni: c4\r\nCSeq: 2 REGISTER\r\n\r\n",
			vias: []string{"SIP / 2.0 / UDP 198.18.0.2 ;branch=z9hG4bKc;received=203.0.113.9, SIP/2.0/TCP\r\n 198.18.0.3;branch=z9hG4bKd"}},
		{name: "IPv6 sent-by of the source",
			req:  "OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK6\r\nFrom: <sip:a@x>;tag=1\r\nTo: sip:b@y\r\nCall-ID: c5\r\nCSeq: 1 OPTIONS\r\n\r\n",
			vias: []string{"SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK6;received=203.0.113.9"}},
		{name: "ACK", noReply: true,
			req: "ACK sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n"},
		{name: "response", noReply: true,
			req: "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.18.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"},
		{name: "no Call-ID", noReply: true,
			req: "OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCSeq: 1 OPTIONS\r\n\r\n"},
		{name: "garbage", noReply: true, req: "garbage"},
	}
	rp := newReplier()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, ends := rp.reply([]byte(tc.req), src, 503, "Service Unavailable", warningText(`no relay ports left "now"`), 5, replyFull)
			if tc.noReply {
				if out != nil {
					t.Fatalf("answered:\n%s", out)
				}
				return
			}
			msg := string(out)
			res, err := sip.ParseMessage(out)
			if err != nil {
				t.Fatalf("the reply does not parse: %v\n%s", err, out)
			}
			if r, ok := res.(*sip.Response); !ok || r.StatusCode != 503 {
				t.Fatalf("not a 503:\n%s", out)
			}
			if got := headerValues(msg, "Via"); strings.Join(got, "|") != strings.Join(tc.vias, "|") {
				t.Errorf("Via\n got %q\nwant %q", got, tc.vias)
			}
			h, _ := scanRequest([]byte(tc.req))
			for _, c := range []struct{ name, want string }{{"From", h.from}, {"Call-ID", h.callID}, {"CSeq", h.cseq}} {
				if got := headerValues(msg, c.name); len(got) != 1 || got[0] != c.want {
					t.Errorf("%s = %q, want %q", c.name, got, c.want)
				}
			}
			to := headerValues(msg, "To")
			want := tc.to
			if want == "" {
				want = h.to + ";tag=" + rp.tag(h)
			}
			if len(to) != 1 || to[0] != want || strings.Count(strings.ToLower(to[0]), "tag=") > strings.Count(strings.ToLower(h.to), "tag=")+1 {
				t.Errorf("To = %q, want %q", to, want)
			}
			if w := headerValues(msg, "Warning"); len(w) != 1 || w[0] != `399 sipcar "no relay ports left 'now'"` {
				t.Errorf("Warning = %q", w)
			}
			if ra := headerValues(msg, "Retry-After"); len(ra) != 1 || ra[0] != "5" {
				t.Errorf("Retry-After = %q", ra)
			}
			if (h.method == "INVITE") != (ends != nil) || (ends != nil && (ends.callID != h.callID || ends.branch != h.topBranch)) {
				t.Errorf("ends %+v for a %s", ends, h.method)
			}
		})
	}
}

// A retransmission gets the same To tag; another request another one.
func TestReplyTagStable(t *testing.T) {
	rp := newReplier()
	req := "OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
	src := netip.MustParseAddrPort("198.18.0.2:5060")
	a, _ := rp.reply([]byte(req), src, 400, "Bad Request", "", 0, replyFull)
	b, _ := rp.reply([]byte(req), src, 400, "Bad Request", "", 0, replyFull)
	c, _ := rp.reply([]byte(strings.Replace(req, "Call-ID: c", "Call-ID: d", 1)), src, 400, "Bad Request", "", 0, replyFull)
	ta, tb, tc := headerValues(string(a), "To"), headerValues(string(b), "To"), headerValues(string(c), "To")
	if ta[0] != tb[0] {
		t.Errorf("a retransmission got another tag: %q, %q", ta, tb)
	}
	if ta[0] == tc[0] {
		t.Errorf("another request got the same tag %q", ta)
	}
	if other := newReplier(); string(mustReply(t, other, req, src)) == string(a) {
		t.Error("another sipcar makes the same tags: they are not keyed")
	}
}

func mustReply(t *testing.T, rp *replier, req string, src netip.AddrPort) []byte {
	t.Helper()
	out, _ := rp.reply([]byte(req), src, 400, "Bad Request", "", 0, replyFull)
	if out == nil {
		t.Fatal("no reply")
	}
	return out
}

// FuzzReply: whatever arrives, the reply builder does not panic; a reply it makes parses as a
// response with the request's Call-ID and CSeq and carries every Via of the request, the top one
// extended only by received/rport.
func FuzzReply(f *testing.F) {
	for _, s := range []string{
		"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2:5060;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\n\r\n",
		"OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060 ;branch=z9hG4bKsp;rport\r\nf: <sip:a@x>;tag=1\r\nt: <sip:b@y>\r\ni: c2\r\nCSeq: 1 OPTIONS\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	// The RFC 4475 torture messages beside the rewriter's tests.
	files, _ := filepath.Glob("../rewrite/testdata/torture/rfc4475/*.dat")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	rp := newReplier()
	src := netip.MustParseAddrPort("203.0.113.9:7000")
	f.Fuzz(func(t *testing.T, req []byte) {
		out, _ := rp.reply(req, src, 400, "Bad Request", warningText("x"), 0, replyFull)
		if out == nil {
			return
		}
		h, ok := scanRequest(req)
		if !ok {
			t.Fatalf("answered a request the scanner refuses:\n%q", req)
		}
		msg := string(out)
		if !strings.HasPrefix(msg, "SIP/2.0 400 Bad Request\r\n") || !strings.HasSuffix(msg, "Content-Length: 0\r\n\r\n") {
			t.Fatalf("not a whole 400:\n%q", msg)
		}
		if got := headerValues(msg, "Call-ID"); len(got) != 1 || got[0] != h.callID {
			t.Errorf("Call-ID %q, want %q", got, h.callID)
		}
		vias := headerValues(msg, "Via")
		if len(vias) != len(h.vias) {
			t.Fatalf("%d Vias, want %d", len(vias), len(h.vias))
		}
		for i, v := range h.vias {
			if i == 0 {
				// A folded top Via ends its via-parm at the fold: the reply writes it unfolded.
				if head := strings.TrimRight(strings.SplitN(topViaParm(v), ";", 2)[0], " \t\r\n"); !strings.HasPrefix(vias[0], head) {
					t.Errorf("top Via %q lost what %q said", vias[0], v)
				}
				continue
			}
			if vias[i] != v {
				t.Errorf("Via %d = %q, want %q", i, vias[i], v)
			}
		}
	})
}
