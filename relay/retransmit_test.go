package relay

import (
	"fmt"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/sipcar/sipcar/relay/policy"
)

// rateLimited is a loopbed whose policy lets the phone start one request per minute.
func rateLimited(t *testing.T) (*loopbed, *policy.Policy) {
	t.Helper()
	rules, err := policy.Parse("permit src=127.0.0.3/32 rate=1/m burst=1")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(rules, policy.Config{Default: policy.Deny})
	if err != nil {
		t.Fatal(err)
	}
	return newLoopbed(t, func(c *Config) { c.Policy = pol }), pol
}

func (b *loopbed) invite(id string) string {
	return withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s\n"+
		"From: <sip:200@127.0.0.1>;tag=%s\nTo: <sip:100@127.0.0.1>\nCall-ID: %s\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"User-Agent: a phone with a long enough name\n", b.sip.Port(), addrOf(b.phone), id, id, id), sdp("127.0.0.3", 4000))
}

// A request refused by the policy and retransmitted gets the same answer each time and is
// counted once: the refusal, the rule's rate and its hits see one request.
func TestRetransmittedRefusal(t *testing.T) {
	b, pol := rateLimited(t)
	b.send(b.phone, b.sip, b.invite("first")) // takes the rule's one token
	b.recv(b.pbx)
	second := b.invite("second")
	var answers []string
	for range 4 {
		b.send(b.phone, b.sip, second)
		m, _ := b.recv(b.phone)
		answers = append(answers, m.String())
	}
	for _, a := range answers[1:] {
		if a != answers[0] {
			t.Errorf("a retransmission got another answer:\n%s\n---\n%s", a, answers[0])
		}
	}
	if res, _ := sip.ParseMessage([]byte(answers[0])); res.(*sip.Response).StatusCode != 503 {
		t.Errorf("the rate-limited INVITE got %q, want 503", answers[0])
	}
	if n := counted(t, b.r.metrics.dropped, "reason", "policy"); n != 1 {
		t.Errorf("policy refusals counted %v, want 1 (the retransmissions are not new requests)", n)
	}
	if n := counted(t, b.r.metrics.dropped, "reason", "retransmission"); n != 3 {
		t.Errorf("retransmissions absorbed %v, want 3", n)
	}
	if s := pol.Snapshot(); s.Rules[0].Hits != 2 {
		t.Errorf("the rule counts %d hits, want 2 (two requests)", s.Rules[0].Hits)
	}
}

// A forwarded INVITE retransmitted before any response is forwarded again without being
// screened again (its rule's rate is spent); once the next hop answered, a retransmission gets
// that answer again from sipcar and does not reach the next hop.
func TestRetransmittedInvite(t *testing.T) {
	b, _ := rateLimited(t)
	inv := b.invite("call")
	b.send(b.phone, b.sip, inv)
	m, src := b.recv(b.pbx)
	b.send(b.phone, b.sip, inv)
	if again, _ := b.recv(b.pbx); again.String() != m.String() {
		t.Errorf("the retransmission was forwarded as another request:\n%s", again)
	}
	req := m.(*sip.Request)
	b.send(b.pbx, src, fmt.Sprintf("SIP/2.0 100 Trying\nVia: %s\nFrom: %s\nTo: %s\nCall-ID: call\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
		req.Via().Value(), req.From().Value(), req.To().Value()))
	trying, _ := b.recv(b.phone)
	b.send(b.phone, b.sip, inv)
	if again, _ := b.recv(b.phone); again.String() != trying.String() {
		t.Errorf("a retransmission after the 100 got %q, want the 100 again", again.String())
	}
	silent(t, b.pbx, "a retransmission answered already reached the PBX")
	if n := counted(t, b.r.metrics.dropped, "reason", "policy"); n != 0 {
		t.Errorf("policy refusals %v: a retransmission was screened again", n)
	}
}
