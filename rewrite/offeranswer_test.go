package rewrite

import (
	"fmt"
	"strings"
	"testing"
)

// SDP is translated wherever it travels: offers and answers in INVITE, 183, 200, ACK (late
// offer), PRACK and its 200, UPDATE and its 200, re-INVITE holds and resumes.
func TestSDPEverywhere(t *testing.T) {
	const inside, outside = "192.168.1.1", "1.1.1.2"
	type row struct {
		start  string // start line
		cseq   string
		from   Side
		media  string // SDP media section(s)
		want   []Disposition
		wantIn string // must appear in the output
	}
	rows := []row{
		{"INVITE sip:bob@1.1.1.1 SIP/2.0", "1 INVITE", Inside, "m=audio 3000 RTP/AVP 0\r\n", []Disposition{Relayed}, "m=audio 3334 RTP/AVP 0"},
		{"SIP/2.0 183 Session Progress", "1 INVITE", Outside, "m=audio 4000 RTP/AVP 0\r\n", []Disposition{Relayed}, "m=audio 5334 RTP/AVP 0"},
		{"SIP/2.0 180 Ringing", "1 INVITE", Outside, "m=audio 4000 RTP/AVP 0\r\n", []Disposition{Relayed}, "c=IN IP4 192.168.1.254"},
		{"PRACK sip:bob@1.1.1.2 SIP/2.0", "2 PRACK", Inside, "m=audio 3000 RTP/AVP 0\r\n", []Disposition{Relayed}, "c=IN IP4 1.1.1.10"},
		{"SIP/2.0 200 OK", "2 PRACK", Outside, "m=audio 4000 RTP/AVP 0\r\n", []Disposition{Relayed}, "c=IN IP4 192.168.1.254"},
		{"SIP/2.0 200 OK", "1 INVITE", Outside, "m=audio 4000 RTP/AVP 0\r\n", []Disposition{Relayed}, "m=audio 5334 RTP/AVP 0"},
		{"ACK sip:bob@1.1.1.2 SIP/2.0", "1 ACK", Inside, "m=audio 3000 RTP/AVP 0\r\n", []Disposition{Relayed}, "m=audio 3334 RTP/AVP 0"},
		{"UPDATE sip:bob@1.1.1.2 SIP/2.0", "3 UPDATE", Inside, "m=audio 3000 RTP/AVP 0\r\n", []Disposition{Relayed}, "c=IN IP4 1.1.1.10"},
		{"SIP/2.0 200 OK", "3 UPDATE", Outside, "m=audio 4000 RTP/AVP 0\r\n", []Disposition{Relayed}, "c=IN IP4 192.168.1.254"},
		{"INVITE sip:bob@1.1.1.2 SIP/2.0", "4 INVITE", Inside, "m=audio 3000 RTP/AVP 0\r\na=sendonly\r\n", []Disposition{Relayed}, "m=audio 3334 RTP/AVP 0\r\na=sendonly"},
		{"INVITE sip:bob@1.1.1.2 SIP/2.0", "5 INVITE", Inside, "m=audio 3000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\n", []Disposition{Held}, "m=audio 3000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0"},
		{"INVITE sip:bob@1.1.1.2 SIP/2.0", "6 INVITE", Inside, "m=audio 3000 RTP/AVP 0\r\na=inactive\r\n", []Disposition{Held}, "c=IN IP4 1.1.1.10\r\nt=0 0\r\nm=audio 3000 RTP/AVP 0\r\na=inactive"},
		{"INVITE sip:bob@1.1.1.2 SIP/2.0", "7 INVITE", Inside, "m=audio 3000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n", []Disposition{Relayed, Rejected}, "m=video 0 RTP/AVP 96"},
	}
	for i, r := range rows {
		t.Run(fmt.Sprintf("%d %s %s", i, strings.Fields(r.start)[0], r.cseq), func(t *testing.T) {
			addr, via := inside, "192.168.1.1:2000"
			if r.from == Outside {
				addr, via = outside, "1.1.1.10:2222"
			}
			sdp := "v=0\r\no=- 1 1 IN IP4 " + addr + "\r\ns=-\r\nc=IN IP4 " + addr + "\r\nt=0 0\r\n" + r.media
			msg := r.start + "\r\nVia: SIP/2.0/UDP " + via + ";branch=z9hG4bK1\r\nTo: <sip:bob@1.1.1.1>;tag=b\r\n" +
				"From: <sip:alice@1.1.1.1>;tag=a\r\nCall-ID: oa\r\nCSeq: " + r.cseq + "\r\nContent-Type: application/sdp\r\n" +
				fmt.Sprintf("Content-Length: %d\r\n\r\n", len(sdp)) + sdp
			nat := newNAT()
			nat.Translate(Addr{Field: FieldVia, From: Inside, AddrPort: mustAP("192.168.1.1:2000")}) // A's binding exists
			var m Message
			var res Result
			if err := Parse([]byte(msg), &m); err != nil {
				t.Fatal(err)
			}
			if err := Rewrite(&res, &m, r.from, nat); err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, "", m.Bytes(), &res)
			if len(res.Streams) != len(r.want) {
				t.Fatalf("streams %+v", res.Streams)
			}
			for i, d := range r.want {
				if res.Streams[i].Disposition != d {
					t.Errorf("stream %d: %v, want %v", i, res.Streams[i].Disposition, d)
				}
			}
			if !strings.Contains(string(res.Out), r.wantIn) {
				t.Errorf("output lacks %q:\n%s", r.wantIn, res.Out)
			}
			if strings.Contains(string(res.Out), "IN IP4 "+addr) {
				t.Errorf("SDP address %s left:\n%s", addr, res.Out)
			}
		})
	}
}

// An IPv6 SDP address in brackets (not RFC 4566, but sipp writes it) is read and translated, not
// left behind.
func TestSDPBracketedIPv6(t *testing.T) {
	sdp := "v=0\r\no=- 1 1 IN IP6 [2001:db8:a::10]\r\ns=-\r\nc=IN IP6 [2001:db8:a::10]\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
	msg := "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP [2001:db8:b::10]:2222;branch=z9hG4bK1\r\nTo: <sip:b@x>;tag=b\r\nFrom: <sip:a@x>;tag=a\r\n" +
		"Call-ID: v6\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n" + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(sdp)) + sdp
	var m Message
	var r Result
	if err := Parse([]byte(msg), &m); err != nil {
		t.Fatal(err)
	}
	if err := Rewrite(&r, &m, Inside, newNAT()); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, "", m.Bytes(), &r)
	out := string(r.Out)
	if strings.Contains(out, "2001:db8:a::10") || !strings.Contains(out, "c=IN IP6 2001:db8:b::10\r\n") || !strings.Contains(out, "IN IP6 2001:db8:b::10\r\ns=") {
		t.Errorf("bracketed inside address not translated:\n%s", out)
	}
	if len(r.Streams) != 1 || r.Streams[0].Disposition != Relayed {
		t.Errorf("streams %+v", r.Streams)
	}
}
