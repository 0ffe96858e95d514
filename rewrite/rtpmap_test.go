package rewrite

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestRTPMap(t *testing.T) {
	sdp := "v=0\no=- 1 1 IN IP4 192.168.1.1\ns=-\nc=IN IP4 192.168.1.1\nt=0 0\n" +
		"m=audio 3000 RTP/AVP 0 96 101\na=rtpmap:0 PCMU/8000\na=rtpmap:96 opus/48000/2\na=rtpmap:101 telephone-event/8000\n" +
		"a=rtpmap:102\na=rtpmap:200 x/8000\na=rtpmap:103 AMR-WB/0\na=rtpmap:104 noclock\n" + // none of these parse
		"m=video 3002 RTP/AVP 97\na=rtpmap:97 H264/90000\n" +
		"m=audio 0 RTP/AVP 8\n"
	in := strings.ReplaceAll("INVITE sip:b@1.1.1.1 SIP/2.0\nVia: SIP/2.0/UDP 192.168.1.1:5060;branch=z9hG4bK1\nTo: <sip:b@1.1.1.1>\n"+
		"From: <sip:a@1.1.1.1>;tag=1\nCall-ID: x\nCSeq: 1 INVITE\nContact: <sip:a@192.168.1.1:5060>\nContent-Type: application/sdp\n"+
		"Content-Length: 0\n\n", "\n", "\r\n")
	in = strings.Replace(in, "Content-Length: 0", "Content-Length: "+strconv.Itoa(len(sdp)), 1) + sdp
	var m Message
	var r Result
	if err := Parse([]byte(in), &m); err != nil {
		t.Fatal(err)
	}
	if err := Rewrite(&r, &m, Inside, newNAT()); err != nil {
		t.Fatal(err)
	}
	want := [][]RTPMap{
		{{0, "PCMU", 8000}, {96, "opus", 48000}, {101, "telephone-event", 8000}},
		{{97, "H264", 90000}},
		nil,
	}
	if len(r.Streams) != len(want) {
		t.Fatalf("%d streams, want %d", len(r.Streams), len(want))
	}
	for i := range want {
		if got := r.RTPMap(i); !slices.Equal(got, want[i]) {
			t.Errorf("stream %d: rtpmap %+v, want %+v", i, got, want[i])
		}
	}
	if got := string(r.Out); !strings.Contains(got, "a=rtpmap:102\n") || !strings.Contains(got, "a=rtpmap:104 noclock\n") {
		t.Errorf("rtpmap lines that do not parse were not kept as they were:\n%s", got)
	}
}
