package relay

import (
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

func TestReply(t *testing.T) {
	req := "INVITE sip:bob@198.51.100.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.18.0.2:5060;branch=z9hG4bK1;rport\r\n" +
		"Via: SIP/2.0/UDP 198.18.0.9;branch=z9hG4bK0\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c1\r\nCSeq: 7 INVITE\r\n" +
		"Content-Length: 0\r\n\r\n"
	out := reply([]byte(req), 503, "Service Unavailable", `399 sipcar "`+quoteWarning(`no relay ports left "now"`)+`"`, 5)
	msg, err := sip.ParseMessage(out)
	if err != nil {
		t.Fatalf("reply does not parse: %v\n%s", err, out)
	}
	res := msg.(*sip.Response)
	if res.StatusCode != 503 || res.CallID().Value() != "c1" || res.CSeq().SeqNo != 7 || len(res.GetHeaders("Via")) != 2 {
		t.Errorf("bad reply:\n%s", out)
	}
	if tag, _ := res.To().Params.Get("tag"); tag == "" {
		t.Errorf("reply without a To tag:\n%s", out)
	}
	if w := res.GetHeader("Warning"); w == nil || w.Value() != `399 sipcar "no relay ports left 'now'"` {
		t.Errorf("Warning = %v", w)
	}
	if ra := res.GetHeader("Retry-After"); ra == nil || ra.Value() != "5" {
		t.Errorf("Retry-After = %v", ra)
	}
	if reply([]byte(strings.Replace(req, "INVITE", "ACK", 2)), 400, "Bad Request", "x", 0) != nil {
		t.Error("an ACK was answered")
	}
	if reply([]byte("garbage"), 400, "Bad Request", "x", 0) != nil {
		t.Error("garbage was answered")
	}
}
