package relay

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sipcar/sipcar/pinhole"
)

// counted returns the value of one series of a counter vector (label name=value), 0 if none.
func counted(t *testing.T, vec *prometheus.CounterVec, name, value string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(vec); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == name && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// silent fails the test if c receives anything within a short while.
func silent(t *testing.T, c *net.UDPConn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := c.ReadFromUDPAddrPort(make([]byte, 65535)); err == nil {
		t.Errorf("%s: %d bytes arrived", what, n)
	}
}

// A response that answers nothing sipcar forwarded reaches nobody, whatever its Via names: not
// the PBX on the inside, not a third party.
func TestUnsolicitedResponseDropped(t *testing.T) {
	b := newLoopbed(t, nil)
	third := listenRTP(t, "127.0.0.5")
	for _, target := range []netip.AddrPort{addrOf(b.pbx), addrOf(third)} {
		b.send(b.phone, b.sip, fmt.Sprintf("SIP/2.0 200 OK\nVia: SIP/2.0/UDP %s;branch=z9hG4bKforged\n"+
			"From: <sip:a@x>;tag=1\nTo: <sip:b@y>;tag=2\nCall-ID: forged\nCSeq: 1 INVITE\nContent-Length: 5\n\nhello", target))
	}
	silent(t, b.pbx, "an unsolicited response reached the PBX")
	silent(t, third, "an unsolicited response reached a third party")
	if n := counted(t, b.r.metrics.dropped, "reason", "unmatched-response"); n != 2 {
		t.Errorf("unmatched-response counted %v, want 2", n)
	}
}

// A response to a transaction sipcar forwarded passes only from where the request went; a forged
// one from elsewhere, or with another branch, is dropped; the real one then reaches the phone.
func TestForgedResponseDropped(t *testing.T) {
	b := newLoopbed(t, nil)
	forger := listenRTP(t, "127.0.0.5")
	b.send(b.phone, b.sip, fmt.Sprintf("OPTIONS sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKreal\n"+
		"From: <sip:200@127.0.0.1>;tag=f\nTo: <sip:100@127.0.0.1>\nCall-ID: forge\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
		b.sip.Port(), addrOf(b.phone)))
	m, src := b.recv(b.pbx)
	via := m.(*sip.Request).Via().Value()
	ok := func(via string) string {
		return fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=f\nTo: <sip:100@127.0.0.1>;tag=u\n"+
			"Call-ID: forge\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n", via)
	}
	b.send(forger, src, ok(via))                                                   // the right branch, another source
	b.send(b.pbx, src, ok(strings.Replace(via, "z9hG4bKreal", "z9hG4bKother", 1))) // the right source, another branch
	silent(t, b.phone, "a forged response reached the phone")
	if n := counted(t, b.r.metrics.dropped, "reason", "response-source"); n != 1 {
		t.Errorf("response-source counted %v, want 1", n)
	}
	if n := counted(t, b.r.metrics.dropped, "reason", "unmatched-response"); n != 1 {
		t.Errorf("unmatched-response counted %v, want 1", n)
	}
	b.send(b.pbx, src, ok(via))
	if m, _ := b.recv(b.phone); m.(*sip.Response).StatusCode != 200 {
		t.Errorf("the real response: %v", m)
	}
}

// An outside phone naming the inside (or sipcar's own host) where it asks to be reached gets its
// source address bound instead; the inside is never a binding's destination.
func TestOutsideCannotNameTheInside(t *testing.T) {
	b := newLoopbed(t, nil)
	inside := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), 6379)
	b.send(b.phone, b.sip, fmt.Sprintf("REGISTER sip:127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKreg\n"+
		"From: <sip:200@127.0.0.1>;tag=r\nTo: <sip:200@127.0.0.1>\nCall-ID: reg\nCSeq: 1 REGISTER\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\nContent-Length: 0\n\n", b.sip.Port(), addrOf(b.phone), inside))
	m, _ := b.recv(b.pbx)
	c := m.(*sip.Request).Contact()
	if c == nil {
		t.Fatal("no Contact")
	}
	bound := netip.AddrPortFrom(netip.MustParseAddr(c.Address.Host), uint16(c.Address.Port))
	bi, ok := b.r.m.Resolve(pinhole.Inside, bound)
	if !ok {
		t.Fatalf("Contact %v is no binding of sipcar's", bound)
	}
	if bi.ForwardTo() != addrOf(b.phone) {
		t.Errorf("the Contact's binding forwards to %v, want the phone's source %v", bi.ForwardTo(), addrOf(b.phone))
	}
}

// A REGISTER with more Contacts than the cap is answered 403 before any binding is made.
func TestTooManyContacts(t *testing.T) {
	b := newLoopbed(t, func(c *Config) { c.MaxContacts = 3 })
	var contacts []string
	for i := range 50 {
		contacts = append(contacts, fmt.Sprintf("<sip:x@127.0.0.%d:%d>", 3+i%2, 6000+i))
	}
	b.send(b.phone, b.sip, fmt.Sprintf("REGISTER sip:127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKmany\n"+
		"From: <sip:200@127.0.0.1>;tag=r\nTo: <sip:200@127.0.0.1>\nCall-ID: many\nCSeq: 1 REGISTER\nMax-Forwards: 70\n"+
		"Contact: %s\nContent-Length: 0\n\n", b.sip.Port(), addrOf(b.phone), strings.Join(contacts, ", ")))
	m, _ := b.recv(b.phone)
	res := m.(*sip.Response)
	if res.StatusCode != 403 || res.GetHeader("Warning") == nil || !strings.Contains(res.GetHeader("Warning").Value(), "Contacts") {
		t.Errorf("got %d %v, want 403 with a Warning on Contacts", res.StatusCode, res.GetHeader("Warning"))
	}
	silent(t, b.pbx, "the REGISTER was forwarded")
	if s := b.r.m.Snapshot(); s.SignalingPorts.InUse != 0 {
		t.Errorf("%d signalling ports in use after a refused REGISTER, want 0", s.SignalingPorts.InUse)
	}
}

// To a UDP source sipcar knows nothing of, its answer is never larger than the request.
func TestNoAmplification(t *testing.T) {
	b := newLoopbed(t, nil)
	small := "OPTIONS sip:a@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK1\nf: <sip:a@b>;tag=1\n" +
		"t: <sip:b@c>\ni: x\nCSeq: 1 INVITE\nl: 0\n\n" // malformed (CSeq method), compact: an answer would be larger
	b.send(b.phone, b.sip, small)
	_ = b.phone.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 65535)
	if n, _, err := b.phone.ReadFromUDPAddrPort(buf); err == nil && n > len(small)+strings.Count(small, "\n") {
		t.Errorf("answered %d bytes to a request of %d:\n%s", n, len(small)+strings.Count(small, "\n"), buf[:n])
	}
	if n := counted(t, b.r.metrics.dropped, "reason", "reply-size"); n != 1 {
		t.Errorf("reply-size counted %v, want 1", n)
	}
}

// Error replies to one source are capped per second.
func TestErrorRepliesCapped(t *testing.T) {
	b := newLoopbed(t, func(c *Config) { c.MaxErrorReplyRate = 2 })
	bad := fmt.Sprintf("OPTIONS sip:a@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK1\nFrom: <sip:a@b>;tag=1\n"+
		"To: <sip:b@c>\nCall-ID: x\nCSeq: 1 INVITE\nMax-Forwards: 70\nUser-Agent: a phone with a long name\nContent-Length: 0\n\n", addrOf(b.phone))
	start := time.Now()
	for range 20 {
		b.send(b.phone, b.sip, bad)
	}
	// A loaded machine may spread the twenty over time, and tokens come back at 2/s meanwhile.
	refill := int(2*time.Since(start).Seconds()) + 1
	got := 0
	buf := make([]byte, 65535)
	for {
		_ = b.phone.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, _, err := b.phone.ReadFromUDPAddrPort(buf); err != nil {
			break
		}
		got++
	}
	// The burst is twice the rate.
	if got < 4 || got > 4+refill {
		t.Errorf("%d answers to 20 bad requests, want the burst of 4 and at most %d refilled", got, refill)
	}
	if n := counted(t, b.r.metrics.dropped, "reason", "reply-limit"); int(n) != 20-got {
		t.Errorf("reply-limit counted %v, want %d (every request not answered)", n, 20-got)
	}
}

// An INVITE the next hop never answers is answered 503 at Timer B, and its call's pairs go then.
func TestTimerBReleasesMedia(t *testing.T) {
	b := newLoopbed(t, func(c *Config) { c.ResponseTimeout = time.Second })
	b.send(b.phone, b.sip, withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKtb\n"+
		"From: <sip:200@127.0.0.1>;tag=tb\nTo: <sip:100@127.0.0.1>\nCall-ID: tb\nCSeq: 1 INVITE\nMax-Forwards: 70\n",
		b.sip.Port(), addrOf(b.phone)), sdp("127.0.0.3", 4000)))
	b.recv(b.pbx) // and never answered
	if n := media(b.r); n == 0 {
		t.Fatal("no media pairs for the INVITE")
	}
	_ = b.phone.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _, err := b.phone.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no 503: %v", err)
	}
	if m, err := sip.ParseMessage(buf[:n]); err != nil || m.(*sip.Response).StatusCode != 503 {
		t.Fatalf("got %q, want 503", buf[:n])
	}
	if n := media(b.r); n != 0 {
		t.Errorf("%d media bindings left after the 503 at Timer B, want 0", n)
	}
}
