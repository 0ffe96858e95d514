package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipcar/sipcar/relay/hep"
)

// syncBuffer is a log sink the relay's goroutines may write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A HEP collector sees both versions of a relayed INVITE under one correlation id (the Call-ID),
// sipcar's own answers, and, for a traced call, the audit record naming each change; the log has
// the audit at info level for the traced call only.
func TestCaptureAndAudit(t *testing.T) {
	col, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	exp, err := hep.New(hep.Config{Collector: addrOf(col), AgentID: 9, AuthKey: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = exp.Run(ctx) }()
	logs := &syncBuffer{}
	b := newLoopbed(t, func(c *Config) {
		c.Capture = exp
		trace, err := ParseTrace("callid:traced-call")
		if err != nil {
			t.Fatal(err)
		}
		c.Trace = trace
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	phone := addrOf(b.phone)
	invite := func(callID string) string {
		return withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-%s\n"+
			"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: %s\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
			"Contact: <sip:200@%s>\n", b.sip.Port(), phone, callID, callID, phone), sdp("127.0.0.3", 7000))
	}
	b.send(b.phone, b.sip, invite("traced-call"))
	fwd, _ := b.recv(b.pbx)
	b.send(b.phone, b.sip, invite("other-call"))
	b.recv(b.pbx)
	b.send(b.phone, b.sip, "OPTIONS sip:100@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.300:5060;branch=z9hG4bKbad\n"+
		"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: bad-call\nCSeq: 1 OPTIONS\nMax-Forwards: 70\n"+
		"User-Agent: "+strings.Repeat("x", 300)+"\nContent-Length: 0\n\n") // larger than the answer: a stranger gets none larger
	if m, _ := b.recv(b.phone); m.(*sip.Response).StatusCode != 400 {
		t.Fatalf("want sipcar's 400, got %v", m)
	}

	byCall := map[string][]hep.Packet{}
	buf := make([]byte, 65535)
	// traced-call: in, out, audit; other-call: in, out; bad-call: in, sipcar's 400.
	for range 7 {
		_ = col.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := col.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("collector: %v (so far %v)", err, byCall)
		}
		p, agent, key, err := hep.Decode(append([]byte(nil), buf[:n]...))
		if err != nil || agent != 9 || key != "pw" {
			t.Fatalf("HEP packet: agent %d key %q: %v", agent, key, err)
		}
		byCall[p.Correlation] = append(byCall[p.Correlation], p)
	}
	traced := byCall["traced-call"]
	if len(traced) != 3 {
		t.Fatalf("traced call: %d HEP packets, want the INVITE received, sent and its audit", len(traced))
	}
	// The received version comes first; the audit is sent before the message leaves.
	in, out, rec := traced[0], traced[2], traced[1]
	if in.Proto != hep.ProtoSIP || in.Src != phone || in.Dst != b.sip || !strings.Contains(string(in.Payload), "Via: SIP/2.0/UDP "+phone.String()) {
		t.Errorf("received version: %v -> %v proto %d:\n%s", in.Src, in.Dst, in.Proto, in.Payload)
	}
	if out.Proto != hep.ProtoSIP || out.Dst != addrOf(b.pbx) || !strings.Contains(string(out.Payload), "Via: "+fwd.(*sip.Request).Via().Value()) {
		t.Errorf("sent version: %v -> %v:\n%s", out.Src, out.Dst, out.Payload)
	}
	if rec.Proto != hep.ProtoLog {
		t.Fatalf("third packet of the traced call has proto %d, want the audit log", rec.Proto)
	}
	var audit auditRecord
	if err := json.Unmarshal(rec.Payload, &audit); err != nil {
		t.Fatal(err)
	}
	var sawVia, sawSDP bool
	for _, c := range audit.Changes {
		sawVia = sawVia || c.Field == "Via" && c.Old == phone.Addr().String() && c.Why != ""
		sawSDP = sawSDP || c.What == "SDP m= port" && c.Old == "7000"
	}
	if !sawVia || !sawSDP || audit.Before != string(in.Payload) || audit.After != string(out.Payload) {
		t.Errorf("audit lacks the Via host or m= port change, or its before/after: %+v", audit)
	}
	if got := byCall["other-call"]; len(got) != 2 || got[0].Proto != hep.ProtoSIP || got[1].Proto != hep.ProtoSIP {
		t.Errorf("untraced call: %d packets, want its two versions and no audit", len(got))
	}
	if got := byCall["bad-call"]; len(got) != 2 || !strings.HasPrefix(string(got[1].Payload), "SIP/2.0 400") || got[1].Dst != phone {
		t.Errorf("refused request: want it and sipcar's 400 to the phone, got %d packets", len(got))
	}

	lines := strings.Count(logs.String(), `"msg":"rewrite audit"`)
	if lines != 1 || !strings.Contains(logs.String(), `"call":"traced-call"`) {
		t.Errorf("info log has %d audit lines, want the traced call's one:\n%s", lines, logs.String())
	}
}

// A message that reached a listener bound to the wildcard address (sipcar's default, ":5060")
// is captured as sent to sipcar's advertised address on the sender's side, and sipcar's own
// answer as coming from it: the collector shows where the message went, not 0.0.0.0.
func TestCaptureWildcardListener(t *testing.T) {
	col, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	exp, err := hep.New(hep.Config{Collector: addrOf(col)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = exp.Run(ctx) }()
	b := newLoopbed(t, func(c *Config) {
		c.Capture = exp
		c.ListenUDP = netip.AddrPortFrom(netip.IPv4Unspecified(), c.ListenUDP.Port())
	})
	sipcar := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), b.sip.Port())
	phone := addrOf(b.phone)
	b.send(b.phone, sipcar, "OPTIONS sip:100@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.300:5060;branch=z9hG4bKw\n"+
		"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: wild\nCSeq: 1 OPTIONS\nMax-Forwards: 70\n"+
		"User-Agent: "+strings.Repeat("x", 300)+"\nContent-Length: 0\n\n")
	if m, _ := b.recv(b.phone); m.(*sip.Response).StatusCode != 400 {
		t.Fatalf("want sipcar's 400, got %v", m)
	}
	buf := make([]byte, 65535)
	for _, want := range [][2]netip.AddrPort{{phone, sipcar}, {sipcar, phone}} {
		_ = col.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := col.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		p, _, _, err := hep.Decode(append([]byte(nil), buf[:n]...))
		if err != nil {
			t.Fatal(err)
		}
		if p.Src != want[0] || p.Dst != want[1] {
			t.Errorf("captured %v -> %v; want %v -> %v:\n%s", p.Src, p.Dst, want[0], want[1], p.Payload)
		}
	}
}

// A call traced by its source (SIPCAR_TRACE=src:) has every message audited, also an answer
// the callee sends at once: the INVITE makes the call known to the filter before it leaves.
func TestTraceBySourceAuditsTheAnswer(t *testing.T) {
	logs := &syncBuffer{}
	b := newLoopbed(t, func(c *Config) {
		trace, err := ParseTrace("src:127.0.0.3")
		if err != nil {
			t.Fatal(err)
		}
		c.Trace = trace
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	phone := addrOf(b.phone)
	b.send(b.phone, b.sip, withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-src\n"+
		"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: by-source\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\n", b.sip.Port(), phone, phone), sdp("127.0.0.3", 7000)))
	m, src := b.recv(b.pbx)
	b.send(b.pbx, src, fmt.Sprintf("SIP/2.0 180 Ringing\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: by-source\nCSeq: 1 INVITE\nContact: <sip:100@%s>\nContent-Length: 0\n\n", m.(*sip.Request).Via().Value(), addrOf(b.pbx)))
	if r, _ := b.recv(b.phone); r.(*sip.Response).StatusCode != 180 {
		t.Fatalf("want the 180, got %v", r)
	}
	// Both were audited before they were sent.
	n := 0
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"msg":"rewrite audit"`) && strings.Contains(l, `"call":"by-source"`) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d audit lines of the call traced by its source; want the INVITE's and the 180's:\n%s", n, logs.String())
	}
}

// A source filter traces every later message of the calls that source took part in, from
// either side; a Call-ID filter only that call; terms parse with their errors.
func TestTraceFilter(t *testing.T) {
	f, err := ParseTrace("src:203.0.113.0/24 | callid:abc")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	phone, pbx := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("198.18.0.10")
	if !f.Match("abc", pbx, now) {
		t.Error("callid:abc not traced")
	}
	if f.Match("x", pbx, now) {
		t.Error("a call of no traced source traced")
	}
	if !f.Match("x", phone, now) || !f.Match("x", pbx, now.Add(time.Minute)) {
		t.Error("a call the traced source started is not traced on its other side")
	}
	if !f.Match("y", netip.MustParseAddr("::ffff:203.0.113.9"), now) {
		t.Error("a v4-mapped source of the traced network not traced")
	}
	for _, bad := range []string{"src:nonsense", "callid:", "dst:1.2.3.4", "abc"} {
		if _, err := ParseTrace(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if f, err := ParseTrace(" "); f != nil || err != nil {
		t.Errorf("empty: %v, %v", f, err)
	}
	var none *TraceFilter
	if none.Match("abc", phone, now) {
		t.Error("nil filter traced")
	}
}

// A phone behind a NAT (its Via and Contact name 10.0.0.5, its packets come from 127.0.0.3)
// gets its REGISTER's answer with its Via as it wrote it plus received and rport's value, and
// its Contact as it wrote it (no default port added), so that it recognises both.
func TestAnswerGivesBackWhatThePhoneWrote(t *testing.T) {
	b := newLoopbed(t, nil)
	phone := addrOf(b.phone)
	b.send(b.phone, b.sip, fmt.Sprintf("REGISTER sip:127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKnat1;rport\n"+
		"Via: SIP/2.0/TCP [2001:db8:b::9:255];branch=z9hG4bKlower;received=203.0.113.200\n"+
		"From: <sip:200@127.0.0.1>;tag=r1\nTo: <sip:200@127.0.0.1>\nCall-ID: natreg\nCSeq: 1 REGISTER\nMax-Forwards: 70\n"+
		"Contact: <sip:200@10.0.0.5>\nExpires: 60\nContent-Length: 0\n\n", b.sip.Port()))
	m, src := b.recv(b.pbx)
	req := m.(*sip.Request)
	if strings.Contains(req.String(), "10.0.0.5") || strings.Contains(req.String(), "2001:db8") {
		t.Fatalf("the PBX sees the phone's addresses:\n%s", req)
	}
	vias := req.GetHeaders("Via")
	var viaLines []string
	for _, v := range vias {
		viaLines = append(viaLines, "Via: "+v.Value())
	}
	b.send(b.pbx, src, fmt.Sprintf("SIP/2.0 200 OK\n%s\nFrom: <sip:200@127.0.0.1>;tag=r1\nTo: <sip:200@127.0.0.1>;tag=x\n"+
		"Call-ID: natreg\nCSeq: 1 REGISTER\nContact: %s;expires=60\nContent-Length: 0\n\n",
		strings.Join(viaLines, "\n"), req.Contact().Value()))
	buf := make([]byte, 4096)
	_ = b.phone.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _, err := b.phone.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := string(buf[:n])
	wantVia := fmt.Sprintf("Via: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKnat1;rport=%d;received=%s\r\n", phone.Port(), phone.Addr())
	if !strings.Contains(got, wantVia) {
		t.Errorf("the phone's Via is not given back as it wrote it, with received and rport:\n%s\nwant %q", got, wantVia)
	}
	if !strings.Contains(got, "Via: SIP/2.0/TCP [2001:db8:b::9:255];branch=z9hG4bKlower;received=203.0.113.200\r\n") {
		t.Errorf("a lower Via is not given back as written:\n%s", got)
	}
	if !strings.Contains(got, "Contact: <sip:200@10.0.0.5>;expires=60\r\n") {
		t.Errorf("the registrar's Contact is not the phone's own:\n%s", got)
	}
}
