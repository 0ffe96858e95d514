package relay

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/relay/policy"
)

// A loopback testbed for the relay in upstream mode: the PBX at 127.0.0.2 is inside, the phone
// at 127.0.0.3 outside, and sipcar answers on 127.0.0.1 on both sides. Real sockets, no root.
type loopbed struct {
	t     testing.TB
	r     *Relay
	pbx   *net.UDPConn
	phone *net.UDPConn
	sip   netip.AddrPort // sipcar's listener
}

func newLoopbed(t testing.TB, mutate func(*Config)) *loopbed {
	t.Helper()
	listen := func(addr string) *net.UDPConn {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			t.Fatalf("loopback address %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	b := &loopbed{t: t, pbx: listen("127.0.0.2:0"), phone: listen("127.0.0.3:0")}
	port := freeUDPPort(t)
	b.sip = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	lo := netip.MustParseAddr("127.0.0.1")
	cfg := Config{
		Mode:       Upstream,
		Upstream:   b.pbx.LocalAddr().(*net.UDPAddr).AddrPort(),
		InsideNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
		ListenUDP:  b.sip,
		Map: pinhole.Config{
			Inside: pinhole.Addrs{IPv4: lo}, Public: pinhole.Addrs{IPv4: lo},
			MediaPorts: pinhole.PortRange{First: 31000, Last: 31999}, SignalingPorts: pinhole.PortRange{First: 32000, Last: 32999},
		},
		Media: mediarelay.Config{Mode: mediarelay.ModeFallback},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.r = r
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	time.Sleep(50 * time.Millisecond) // the listener opens in Run
	return b
}

func freeUDPPort(t testing.TB) uint16 {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

func (b *loopbed) send(from *net.UDPConn, to netip.AddrPort, msg string) {
	b.t.Helper()
	if _, err := from.WriteToUDPAddrPort([]byte(strings.ReplaceAll(msg, "\n", "\r\n")), to); err != nil {
		b.t.Fatal(err)
	}
}

// recv reads one SIP message; it fails the test after a second.
func (b *loopbed) recv(c *net.UDPConn) (sip.Message, netip.AddrPort) {
	b.t.Helper()
	buf := make([]byte, 65535)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, src, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		b.t.Fatalf("no message: %v", err)
	}
	m, err := sip.ParseMessage(buf[:n])
	if err != nil {
		b.t.Fatalf("unparsable message %q: %v", buf[:n], err)
	}
	return m, src
}

func sdp(addr string, port int) string {
	return fmt.Sprintf("v=0\no=- 1 1 IN IP4 %s\ns=-\nc=IN IP4 %s\nt=0 0\nm=audio %d RTP/AVP 0\n", addr, addr, port)
}

func withBody(head, body string) string {
	return head + fmt.Sprintf("Content-Type: application/sdp\nContent-Length: %d\n\n", len(strings.ReplaceAll(body, "\n", "\r\n"))) + body
}

// The canonical call in upstream mode: the phone calls through sipcar, the PBX answers, media
// flows both ways through the pairs sipcar advertised, and BYE leaves no media binding.
func TestUpstreamCall(t *testing.T) {
	b := newLoopbed(t, nil)
	phone, pbx := addrOf(b.phone), addrOf(b.pbx)
	phoneRTP := listenRTP(t, "127.0.0.3")
	pbxRTP := listenRTP(t, "127.0.0.2")

	invite := withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK1;rport\n"+
		"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: call1\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\n", b.sip.Port(), phone, phone), sdp("127.0.0.3", int(addrOf(phoneRTP).Port())))
	b.send(b.phone, b.sip, invite)

	m, src := b.recv(b.pbx)
	req := m.(*sip.Request)
	via := req.Via()
	if via.Host != "127.0.0.1" || via.Port == int(phone.Port()) {
		t.Errorf("PBX sees Via %s:%d, want a binding of sipcar", via.Host, via.Port)
	}
	if src.Port() != uint16(via.Port) {
		t.Errorf("INVITE came from %v, not from the binding in its Via (%d)", src, via.Port)
	}
	if req.Recipient.Host != "127.0.0.2" || req.Recipient.Port != int(pbx.Port()) {
		t.Errorf("Request-URI %s, want the PBX (the static binding of sipcar's public listener)", req.Recipient.String())
	}
	offer := string(req.Body())
	if strings.Contains(offer, fmt.Sprintf(" %d RTP", addrOf(phoneRTP).Port())) {
		t.Errorf("PBX sees the phone's own media port:\n%s", offer)
	}
	pbxSideRTP := sdpAddr(t, offer)

	ok := withBody(fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: call1\nCSeq: 1 INVITE\nContact: <sip:100@%s>\n", via.Value(), pbx), sdp("127.0.0.2", int(addrOf(pbxRTP).Port())))
	b.send(b.pbx, src, ok)
	m, _ = b.recv(b.phone)
	res := m.(*sip.Response)
	if res.StatusCode != 200 || res.Via().Host != phone.Addr().String() || res.Via().Port != int(phone.Port()) {
		t.Fatalf("phone got %d with Via %s:%d", res.StatusCode, res.Via().Host, res.Via().Port)
	}
	if c := res.Contact(); c == nil || c.Address.Port != int(b.sip.Port()) {
		t.Errorf("phone sees the PBX's Contact %v, want sipcar's public listener", c)
	}
	phoneSideRTP := sdpAddr(t, string(res.Body()))

	// Media both ways: each end sends to the address it was given and hears the other.
	rtp := func(from *net.UDPConn, to netip.AddrPort, seq byte, want *net.UDPConn) {
		t.Helper()
		pkt := append([]byte{0x80, 0, 0, seq, 0, 0, 0, 1, 0, 0, 0, 7}, bytes.Repeat([]byte{seq}, 160)...)
		for i := 0; i < 3; i++ { // the first packets latch; allow for a scheduling hiccup
			if _, err := from.WriteToUDPAddrPort(pkt, to); err != nil {
				t.Fatal(err)
			}
		}
		buf := make([]byte, 2048)
		_ = want.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := want.ReadFromUDPAddrPort(buf)
		if err != nil || !bytes.Equal(buf[:n], pkt) {
			t.Errorf("RTP %d not relayed to %v: %v", seq, addrOf(want), err)
		}
	}
	rtp(phoneRTP, phoneSideRTP, 1, pbxRTP)
	rtp(pbxRTP, pbxSideRTP, 2, phoneRTP)

	if n := media(b.r); n != 4 {
		t.Errorf("server map holds %d media bindings mid-call, want 4 (RTP and RTCP each way)", n)
	}
	bye := fmt.Sprintf("BYE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK2\nFrom: <sip:200@127.0.0.1>;tag=p1\n"+
		"To: <sip:100@127.0.0.1>;tag=x1\nCall-ID: call1\nCSeq: 2 BYE\nMax-Forwards: 70\nContent-Length: 0\n\n", b.sip.Port(), phone)
	b.send(b.phone, b.sip, bye)
	m, src = b.recv(b.pbx)
	byeVia := m.(*sip.Request).Via().Value()
	b.send(b.pbx, src, fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: call1\nCSeq: 2 BYE\nContent-Length: 0\n\n", byeVia))
	if m, _ := b.recv(b.phone); m.(*sip.Response).StatusCode != 200 {
		t.Fatal("BYE not answered")
	}
	if n := media(b.r); n != 0 {
		t.Errorf("server map holds %d media bindings after BYE", n)
	}
}

func listenRTP(t *testing.T, ip string) *net.UDPConn {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sdpAddr returns the c= address and m= port of a one-stream SDP.
func sdpAddr(t *testing.T, body string) netip.AddrPort {
	t.Helper()
	var ip string
	var port int
	for _, l := range strings.Split(body, "\r\n") {
		if a, ok := strings.CutPrefix(l, "c=IN IP4 "); ok {
			ip = a
		}
		if a, ok := strings.CutPrefix(l, "c=IN IP6 "); ok {
			ip = a
		}
		if m, ok := strings.CutPrefix(l, "m=audio "); ok {
			fmt.Sscanf(m, "%d", &port)
		}
	}
	a, err := netip.ParseAddr(ip)
	if err != nil || port == 0 {
		t.Fatalf("no media address in\n%s", body)
	}
	return netip.AddrPortFrom(a, uint16(port))
}

func media(r *Relay) int {
	n := 0
	for _, e := range r.Map().Snapshot().Bindings {
		if e.Type != pinhole.TypeSIP {
			n++
		}
	}
	return n
}

// A malformed request is answered 400 with a Warning saying what is wrong, and not forwarded.
func TestMalformedRequestGets400(t *testing.T) {
	b := newLoopbed(t, nil)
	b.send(b.phone, b.sip, "OPTIONS sip:100@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK1\n"+
		"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: bad1\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"User-Agent: a phone with a name\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY\nContent-Length: 0\n\n")
	m, _ := b.recv(b.phone)
	res := m.(*sip.Response)
	if res.StatusCode != 400 {
		t.Fatalf("got %d, want 400", res.StatusCode)
	}
	if w := res.GetHeader("Warning"); w == nil || !strings.Contains(w.Value(), "CSeq") {
		t.Errorf("Warning %v does not name the CSeq", w)
	}
	_ = b.pbx.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := b.pbx.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
		t.Errorf("malformed request forwarded (%d bytes)", n)
	}
}

// With the port range exhausted an INVITE is answered 503 with Retry-After, nothing is left
// allocated, and once the first call ends a new one gets its ports.
func TestExhaustionGets503(t *testing.T) {
	// Two pairs: one call's offer and the pair reserved for its answer.
	b := newLoopbed(t, func(c *Config) { c.Map.MediaPorts = pinhole.PortRange{First: 31000, Last: 31003} })
	invite := func(id string) string {
		return withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s\n"+
			"From: <sip:200@127.0.0.1>;tag=%s\nTo: <sip:100@127.0.0.1>\nCall-ID: %s\nCSeq: 1 INVITE\nMax-Forwards: 70\n",
			b.sip.Port(), addrOf(b.phone), id, id, id), sdp("127.0.0.3", 4000))
	}
	b.send(b.phone, b.sip, invite("c1"))
	b.recv(b.pbx) // the first call holds both pairs
	b.send(b.phone, b.sip, invite("c2"))
	m, _ := b.recv(b.phone)
	res := m.(*sip.Response)
	if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("second call got %d (Retry-After %v), want 503 with Retry-After", res.StatusCode, res.GetHeader("Retry-After"))
	}
	if res.CallID().Value() != "c2" {
		t.Errorf("503 for call %s", res.CallID().Value())
	}
	// Its ACK ends at sipcar: the PBX never saw the INVITE.
	b.send(b.phone, b.sip, fmt.Sprintf("ACK sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKc2\n"+
		"From: <sip:200@127.0.0.1>;tag=c2\nTo: %s\nCall-ID: c2\nCSeq: 1 ACK\nMax-Forwards: 70\nContent-Length: 0\n\n",
		b.sip.Port(), addrOf(b.phone), res.To().Value()))
	_ = b.pbx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := b.pbx.ReadFromUDPAddrPort(make([]byte, 4096)); err == nil {
		t.Errorf("the ACK of sipcar's own 503 reached the PBX (%d bytes)", n)
	}
	b.r.calls.end("c1", pinhole.ReasonCallEnded)
	b.send(b.phone, b.sip, invite("c3"))
	if m, _ := b.recv(b.pbx); m.(*sip.Request).CallID().Value() != "c3" {
		t.Error("no call after the first ended")
	}
}

// A retransmitted INVITE is rewritten with the same bindings: no second allocation.
func TestRetransmissionKeepsPorts(t *testing.T) {
	b := newLoopbed(t, nil)
	invite := withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKr\n"+
		"From: <sip:200@127.0.0.1>;tag=r\nTo: <sip:100@127.0.0.1>\nCall-ID: rtx\nCSeq: 1 INVITE\nMax-Forwards: 70\n",
		b.sip.Port(), addrOf(b.phone)), sdp("127.0.0.3", 4000))
	b.send(b.phone, b.sip, invite)
	first, _ := b.recv(b.pbx)
	b.send(b.phone, b.sip, invite)
	second, _ := b.recv(b.pbx)
	if first.String() != second.String() {
		t.Errorf("retransmission rewritten differently:\n%s\n---\n%s", first, second)
	}
	if n := media(b.r); n != 4 {
		t.Errorf("%d media bindings after a retransmitted offer, want 4 (the offer's pair and the one reserved for its answer)", n)
	}
}

// A request the next hop never answers gets 503 from sipcar once Timer B runs out; one that is
// answered does not.
func TestUnansweredRequestGets503(t *testing.T) {
	b := newLoopbed(t, func(c *Config) { c.ResponseTimeout = 1500 * time.Millisecond })
	opt := func(id string) string {
		return fmt.Sprintf("OPTIONS sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s\n"+
			"From: <sip:200@127.0.0.1>;tag=%s\nTo: <sip:100@127.0.0.1>\nCall-ID: %s\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
			b.sip.Port(), addrOf(b.phone), id, id, id)
	}
	b.send(b.phone, b.sip, opt("answered"))
	m, src := b.recv(b.pbx)
	b.send(b.pbx, src, fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=answered\nTo: <sip:100@127.0.0.1>;tag=u\n"+
		"Call-ID: answered\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n", m.(*sip.Request).Via().Value()))
	if m, _ := b.recv(b.phone); m.(*sip.Response).StatusCode != 200 {
		t.Fatal("200 not relayed")
	}
	b.send(b.phone, b.sip, opt("lost"))
	b.recv(b.pbx) // and never answered
	buf := make([]byte, 4096)
	_ = b.phone.SetReadDeadline(time.Now().Add(4 * time.Second))
	n, _, err := b.phone.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no 503 for the unanswered request: %v", err)
	}
	res, err := sip.ParseMessage(buf[:n])
	if err != nil || res.(*sip.Response).StatusCode != 503 || res.(*sip.Response).CallID().Value() != "lost" {
		t.Fatalf("got %q, want 503 for call lost", buf[:n])
	}
}

// The policy screens requests that start something: a denied INVITE gets 403 with the rule in
// its Warning and is not forwarded, a silent rule drops without an answer, a permitted source
// calls, and an in-dialog request of a permitted dialog is not screened again.
func TestPolicy(t *testing.T) {
	rules, err := policy.Parse("deny src=127.0.0.4/32 silent; permit src=127.0.0.3/32 method=INVITE,BYE,OPTIONS; deny src=any")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(rules, policy.Config{Default: policy.Permit})
	if err != nil {
		t.Fatal(err)
	}
	b := newLoopbed(t, func(c *Config) { c.Policy = pol })
	scanner := listenRTP(t, "127.0.0.4")
	req := func(from *net.UDPConn, method, id, toTag string) string {
		return fmt.Sprintf("%s sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s\n"+
			"From: <sip:200@127.0.0.1>;tag=%s\nTo: <sip:100@127.0.0.1>%s\nCall-ID: %s\nCSeq: 1 %s\nMax-Forwards: 70\n"+
			"Contact: <sip:200@%s>;expires=3600\nUser-Agent: a phone with a long name\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\nContent-Length: 0\n\n",
			method, b.sip.Port(), addrOf(from), id, id, toTag, id, method, addrOf(from))
	}
	b.send(b.phone, b.sip, req(b.phone, "REGISTER", "reg1", ""))
	m, _ := b.recv(b.phone)
	res := m.(*sip.Response)
	if res.StatusCode != 403 {
		t.Fatalf("REGISTER got %d, want 403 (rule 3)", res.StatusCode)
	}
	if w := res.GetHeader("Warning"); w == nil || !strings.Contains(w.Value(), "rule 3") {
		t.Errorf("Warning %v does not name rule 3", w)
	}
	b.send(scanner, b.sip, req(scanner, "OPTIONS", "scan1", ""))
	_ = scanner.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, _, err := scanner.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
		t.Error("a silent rule answered")
	}
	b.send(b.phone, b.sip, req(b.phone, "OPTIONS", "opt1", ""))
	if m, _ := b.recv(b.pbx); m.(*sip.Request).CallID().Value() != "opt1" {
		t.Error("permitted OPTIONS not forwarded")
	}
	b.send(b.phone, b.sip, req(b.phone, "INFO", "info1", ";tag=dlg")) // in a dialog: not screened
	if m, _ := b.recv(b.pbx); m.(*sip.Request).CallID().Value() != "info1" {
		t.Error("in-dialog INFO screened")
	}
	if s := pol.Snapshot(); s.Rules[2].Hits != 1 || s.Rules[0].Hits != 1 || s.Rules[1].Hits != 1 {
		t.Errorf("rule hits %+v", s.Rules)
	}
}

// A public address the host does not have (a cloud's 1:1 NAT): sipcar advertises it and binds
// the local address that receives its traffic.
func TestPublicAddressBehindOneToOneNAT(t *testing.T) {
	public := netip.MustParseAddr("203.0.113.77")
	b := newLoopbed(t, func(c *Config) {
		c.Map.Public = pinhole.Addrs{IPv4: public}
		c.PublicBind = map[netip.Addr]netip.Addr{public: netip.MustParseAddr("127.0.0.1")}
	})
	pbxRTP := listenRTP(t, "127.0.0.2")
	b.send(b.phone, b.sip, withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKn1\n"+
		"From: <sip:200@127.0.0.1>;tag=n1\nTo: <sip:100@127.0.0.1>\nCall-ID: nat1\nCSeq: 1 INVITE\nMax-Forwards: 70\n",
		b.sip.Port(), addrOf(b.phone)), sdp("127.0.0.3", 4000)))
	m, src := b.recv(b.pbx)
	b.send(b.pbx, src, withBody(fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=n1\nTo: <sip:100@127.0.0.1>;tag=u\n"+
		"Call-ID: nat1\nCSeq: 1 INVITE\nContact: <sip:100@%s>\n", m.(*sip.Request).Via().Value(), addrOf(b.pbx)),
		sdp("127.0.0.2", int(addrOf(pbxRTP).Port()))))
	m, _ = b.recv(b.phone)
	res := m.(*sip.Response)
	adv := sdpAddr(t, string(res.Body()))
	if adv.Addr() != public {
		t.Fatalf("phone told to send media to %v, want the public address %v", adv, public)
	}
	if c := res.Contact(); c == nil || c.Address.Host != public.String() {
		t.Errorf("phone sees Contact %v, want the public address", c)
	}
	// What the 1:1 NAT delivers to the local address reaches the PBX.
	phoneRTP := listenRTP(t, "127.0.0.3")
	pkt := append([]byte{0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9}, make([]byte, 160)...)
	for range 3 {
		phoneRTP.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), adv.Port()))
	}
	buf := make([]byte, 2048)
	_ = pbxRTP.SetReadDeadline(time.Now().Add(time.Second))
	if _, _, err := pbxRTP.ReadFromUDPAddrPort(buf); err != nil {
		t.Errorf("media to the bound local address not relayed: %v", err)
	}
}

// A next hop on TCP that refuses connections: the request is answered 503 at once, and so is
// the next one (without a new connect while the failure is fresh).
func TestUnreachableTCPNextHopGets503(t *testing.T) {
	closed := freeUDPPort(t) // nothing listens on TCP there
	b := newLoopbed(t, func(c *Config) {
		c.Upstream = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), closed)
		c.UpstreamTransport = "tcp"
	})
	for _, id := range []string{"u1", "u2"} {
		b.send(b.phone, b.sip, fmt.Sprintf("OPTIONS sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s\n"+
			"From: <sip:200@127.0.0.1>;tag=%s\nTo: <sip:100@127.0.0.1>\nCall-ID: %s\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
			b.sip.Port(), addrOf(b.phone), id, id, id))
		m, _ := b.recv(b.phone)
		res := m.(*sip.Response)
		if res.StatusCode != 503 || res.CallID().Value() != id {
			t.Errorf("%s: got %d for %s, want 503", id, res.StatusCode, res.CallID().Value())
		}
	}
	b.r.tp.streams.mu.Lock()
	_, remembered := b.r.tp.streams.failed[netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), closed)]
	b.r.tp.streams.mu.Unlock()
	if !remembered {
		t.Error("the failed next hop is not remembered")
	}
}

// A request that outgrows 1300 bytes after rewriting goes over TCP when the operator asks for it
// (its Via says TCP); a small one stays on UDP.
func TestLargeRequestFallsBackToTCP(t *testing.T) {
	b := newLoopbed(t, func(c *Config) { c.UDPTCPFallback = true })
	pbxTCP, err := net.Listen("tcp", addrOf(b.pbx).String())
	if err != nil {
		t.Fatalf("no TCP listener beside the PBX's UDP port: %v", err)
	}
	defer pbxTCP.Close()
	got := make(chan string, 1)
	go func() {
		c, err := pbxTCP.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 8192)
		n, _ := c.Read(buf)
		got <- string(buf[:n])
	}()
	big := withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKbig\n"+
		"From: <sip:200@127.0.0.1>;tag=big\nTo: <sip:100@127.0.0.1>\nCall-ID: big\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"X-Padding: %s\n", b.sip.Port(), addrOf(b.phone), strings.Repeat("p", 1400)), sdp("127.0.0.3", 4000))
	b.send(b.phone, b.sip, big)
	select {
	case msg := <-got:
		if !strings.Contains(msg, "Via: SIP/2.0/TCP 127.0.0.1:") || !strings.Contains(msg, "Call-ID: big") {
			t.Errorf("PBX got over TCP:\n%.300s", msg)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the large INVITE did not arrive over TCP")
	}
	b.send(b.phone, b.sip, fmt.Sprintf("OPTIONS sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKsmall\n"+
		"From: <sip:200@127.0.0.1>;tag=s\nTo: <sip:100@127.0.0.1>\nCall-ID: small\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
		b.sip.Port(), addrOf(b.phone)))
	if m, _ := b.recv(b.pbx); m.(*sip.Request).CallID().Value() != "small" {
		t.Error("a small request did not stay on UDP")
	}
}
