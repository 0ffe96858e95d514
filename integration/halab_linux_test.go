package integration

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The failover lab: two sipcars in namespaces of their own share the public and the inside
// address by VRRP (keepalived from Debian, each with sipcar's /readyz as its check), and keep
// the calls in a Redis (redis-server from Debian) on the inside:
//
//	phone 198.51.100.20 ==+                       +== 198.18.0.10 pbx
//	                      += swout =+      += swin =+== 198.18.0.20 redis
//	  cara out0 198.51.100.2 =======+      +======= 198.18.0.2 in0 cara
//	  carb out0 198.51.100.3 =======+      +======= 198.18.0.3 in0 carb
//
// The VRRP addresses, which sipcar is configured with, are 198.51.100.1 (public) and
// 198.18.0.1 (inside); keepalived moves both to the master. The phones and the PBX are Go peers
// that send exactly what the test checks.
type haLab struct {
	*testbed
	phone, pbx, redisNS *netns
	cars                [2]*haCar
	redis               *proc
	redisRuns           int
	srv                 *haPBX
}

// haCar is one of the two sipcars and its keepalived.
type haCar struct {
	name        string // "a" or "b"
	ns          *netns
	in, out     netip.Addr // its own addresses
	sipcar      *sipcarProc
	keepalived  *proc
	priority    int
	killedAt    time.Time
	blockedFrom bool // its traffic to Redis is dropped
}

var (
	haRedisAddr = netip.MustParseAddr("198.18.0.20")
	haVIPs      = []string{"198.18.0.1/24 dev in0", "198.51.100.1/24 dev out0"}
)

// newHALab builds the lab, starts Redis, both sipcars as standbys and their keepalived, and waits
// until the first (higher priority) is the active one.
func newHALab(t *testing.T, env ...string) *haLab {
	t.Helper()
	needProgram(t, "redis-server", "redis-server")
	needProgram(t, "redis-cli", "redis-tools")
	needProgram(t, "keepalived", "keepalived")
	needProgram(t, "curl", "curl")
	tb := newTestbed(t)
	l := &haLab{testbed: tb, phone: tb.host("phone"), pbx: tb.host("pbx"), redisNS: tb.host("redis")}
	swOut, swIn := tb.host("swout"), tb.host("swin")
	l.cars[0] = &haCar{name: "a", ns: tb.host("cara"), in: netip.MustParseAddr("198.18.0.2"), out: netip.MustParseAddr("198.51.100.2"), priority: 250}
	l.cars[1] = &haCar{name: "b", ns: tb.host("carb"), in: netip.MustParseAddr("198.18.0.3"), out: netip.MustParseAddr("198.51.100.3"), priority: 240}
	for _, sw := range []*netns{swOut, swIn} {
		if err := ipCmd("-n", sw.name, "link", "add", "br0", "type", "bridge"); err != nil {
			t.Fatal(err)
		}
		if err := ipCmd("-n", sw.name, "link", "set", "br0", "up"); err != nil {
			t.Fatal(err)
		}
	}
	port := 0
	attach := func(sw *netns, e end) {
		port++
		p := "p" + strconv.Itoa(port)
		tb.link(e, end{sw, p, nil})
		if err := ipCmd("-n", sw.name, "link", "set", p, "master", "br0"); err != nil {
			t.Fatal(err)
		}
	}
	attach(swOut, end{l.phone, "eth0", []string{"198.51.100.20/24"}})
	attach(swIn, end{l.pbx, "eth0", []string{"198.18.0.10/24"}})
	attach(swIn, end{l.redisNS, "eth0", []string{haRedisAddr.String() + "/24"}})
	for _, c := range l.cars {
		attach(swOut, end{c.ns, "out0", []string{c.out.String() + "/24"}})
		attach(swIn, end{c.ns, "in0", []string{c.in.String() + "/24"}})
	}
	l.startRedis()
	l.srv = l.startHAPBX()
	for _, c := range l.cars {
		c.sipcar = l.launchSipcar(c.ns, "sipcar-"+c.name, append([]string{
			"SIPCAR_MODE=upstream",
			"SIPCAR_UPSTREAM=sip:198.18.0.10:5060;transport=udp",
			"SIPCAR_PUBLIC_ADDR=198.51.100.1",
			"SIPCAR_INSIDE_ADDR=198.18.0.1",
			"SIPCAR_INSIDE_NETS=198.18.0.0/24",
			"SIPCAR_LISTEN_UDP=198.51.100.1:5060",
			"SIPCAR_LISTEN_TCP=",
			"SIPCAR_MEDIA_MODE=fallback",
			"SIPCAR_REPLICA_REDIS=redis://" + haRedisAddr.String() + ":6379",
			"SIPCAR_REPLICA_ROLE=standby",
		}, env...)...)
		l.waitReadyz(c, 15*time.Second)
	}
	// keepalived of the first, then of the second: the first becomes master and its sipcar the
	// active one; the second stays backup.
	l.startKeepalived(l.cars[0])
	eventually(t, 20*time.Second, "sipcar a active", func() (bool, string) {
		out := l.cars[0].sipcar.output()
		return strings.Contains(out, `msg="sipcar relaying"`), lastLines(out, 5)
	})
	l.startKeepalived(l.cars[1])
	eventually(t, 10*time.Second, "keepalived b backup", func() (bool, string) {
		out := l.cars[1].keepalived.output()
		return strings.Contains(out, "Entering BACKUP STATE"), lastLines(out, 5)
	})
	return l
}

// startRedis starts (or starts again) redis-server in its namespace, without persistence: a
// restart loses everything it held.
func (l *haLab) startRedis() {
	l.t.Helper()
	l.redisRuns++
	name := "redis" + strconv.Itoa(l.redisRuns)
	dir := l.workdir(name)
	l.redis = l.start(l.redisNS, name, procOpts{dir: dir}, "redis-server", "--bind", haRedisAddr.String(), "--port", "6379",
		"--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", dir)
	eventually(l.t, 10*time.Second, "redis-server up", func() (bool, string) {
		out, err := l.redisCLI("PING")
		return err == nil && strings.TrimSpace(out) == "PONG", out
	})
}

// redisCLI runs redis-cli against the lab's Redis from its namespace.
func (l *haLab) redisCLI(args ...string) (string, error) {
	out, err := l.redisNS.command(append([]string{"redis-cli", "-h", haRedisAddr.String(), "-p", "6379"}, args...)...).CombinedOutput()
	return string(out), err
}

// redisKeys lists the keys matching pattern.
func (l *haLab) redisKeys(pattern string) []string {
	out, err := l.redisCLI("--scan", "--pattern", pattern)
	if err != nil {
		l.t.Fatalf("redis-cli --scan: %v: %s", err, out)
	}
	return strings.Fields(out)
}

// startKeepalived starts keepalived in c's namespace: one VRRP instance on the inside link that
// moves both addresses, unicast to the other sipcar's host, sipcar's /readyz as the check script
// (every second; a refusal fails at once, a slow answer only after 3 s), and no preemption (a
// sipcar that comes back stays backup).
func (l *haLab) startKeepalived(c *haCar) {
	l.t.Helper()
	dir := l.workdir("keepalived-" + c.name)
	check := filepath.Join(dir, "readyz.sh")
	// curl rather than `sipcar healthcheck` (the same request): the suite's sipcar may be built
	// with the race detector, whose start-up alone can outlast the check's timeout on a busy
	// machine.
	script := "#!/bin/sh\nexec curl -fs -o /dev/null --max-time 2 http://" + adminAddr + "/readyz\n"
	if err := os.WriteFile(check, []byte(script), 0o755); err != nil {
		l.t.Fatal(err)
	}
	peer := l.cars[0].in
	if c == l.cars[0] {
		peer = l.cars[1].in
	}
	conf := fmt.Sprintf(`global_defs {
  router_id sipcar%s
  script_user root
}
vrrp_script readyz {
  script "%s"
  interval 1
  timeout 3
  fall 1
  rise 1
}
vrrp_instance sipcar {
  state BACKUP
  interface in0
  virtual_router_id 51
  priority %d
  advert_int 1
  nopreempt
  unicast_src_ip %s
  unicast_peer {
    %s
  }
  virtual_ipaddress {
    %s
  }
  track_script {
    readyz
  }
}
`, c.name, check, c.priority, c.in, peer, strings.Join(haVIPs, "\n    "))
	path := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		l.t.Fatal(err)
	}
	c.keepalived = l.start(c.ns, "keepalived-"+c.name, procOpts{dir: dir}, "keepalived", "--dont-fork", "--log-console",
		"--log-detail", "--no-syslog", "--vrrp", "--use-file="+path, "--pid="+filepath.Join(dir, "k.pid"),
		"--vrrp_pid="+filepath.Join(dir, "v.pid"), "--checkers_pid="+filepath.Join(dir, "c.pid"))
}

// waitReadyz waits until c's sipcar answers /readyz with 200 (a standby: its copy is current).
func (l *haLab) waitReadyz(c *haCar, timeout time.Duration) {
	l.t.Helper()
	eventually(l.t, timeout, "sipcar "+c.name+" /readyz 200", func() (bool, string) {
		if c.sipcar.exited() {
			l.t.Fatalf("sipcar %s exited:\n%s", c.name, lastLines(c.sipcar.output(), 30))
		}
		code, body := c.readyz()
		return code == 200, fmt.Sprintf("%d %s", code, body)
	})
}

// readyz returns c's /readyz status and body (0 when it does not answer).
func (c *haCar) readyz() (int, string) {
	resp, err := c.sipcar.client.Get(c.sipcar.admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b := make([]byte, 1024)
	n, _ := resp.Body.Read(b)
	return resp.StatusCode, strings.TrimSpace(string(b[:n]))
}

// hasVIPs reports whether c's namespace holds the VRRP addresses.
func (c *haCar) hasVIPs() bool {
	out, _ := c.ns.command("ip", "-br", "addr").CombinedOutput()
	return strings.Contains(string(out), "198.51.100.1/24") && strings.Contains(string(out), "198.18.0.1/24")
}

// kill SIGKILLs c's sipcar.
func (c *haCar) kill(t testing.TB) {
	t.Helper()
	c.killedAt = time.Now()
	if err := c.sipcar.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.sipcar.wait(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// blockRedis drops c's traffic to Redis, as a broken link would.
func (c *haCar) blockRedis(t testing.TB) {
	t.Helper()
	rules := fmt.Sprintf("table ip haredis {\n chain out {\n  type filter hook output priority 0; policy accept;\n"+
		"  ip daddr %s tcp dport 6379 drop\n }\n}\n", haRedisAddr)
	cmd := c.ns.command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", c.ns.name, err, out)
	}
	c.blockedFrom = true
}

// haPBX is the PBX: a Go SIP server on 198.18.0.10:5060 that keeps registrations, answers
// INVITEs with 180 and a 200 whose SDP names the media address the test set for the call,
// answers BYE with 200, and ACKs final error responses to its own INVITEs.
type haPBX struct {
	peer *udpPeer
	done chan struct{}

	mu        sync.Mutex                // guards the following
	contacts  map[string]string         // by the AOR's user: the Contact URI registered
	media     map[string]netip.AddrPort // by Call-ID: the PBX's media address to answer with
	invites   map[string]*sipMsg        // by Call-ID: the INVITE as it arrived
	acks      map[string]int
	byes      map[string]int
	responses map[string][]*sipMsg // by Call-ID: responses to the PBX's own requests
}

var haPBXAddr = netip.MustParseAddrPort("198.18.0.10:5060")

func (l *haLab) startHAPBX() *haPBX {
	l.t.Helper()
	p := &haPBX{peer: l.udpPeer(l.pbx, haPBXAddr), done: make(chan struct{}), contacts: map[string]string{},
		media: map[string]netip.AddrPort{}, invites: map[string]*sipMsg{}, acks: map[string]int{}, byes: map[string]int{},
		responses: map[string][]*sipMsg{}}
	l.t.Cleanup(func() {
		p.peer.conn.Close()
		<-p.done
	})
	go p.serve()
	return p
}

func (p *haPBX) serve() {
	defer close(p.done)
	buf := make([]byte, 65535)
	for {
		n, _, err := p.peer.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		m, err := parseSIP(append([]byte(nil), buf[:n]...))
		if err != nil {
			continue
		}
		p.handle(m)
	}
}

func (p *haPBX) handle(m *sipMsg) {
	callID := m.header("Call-ID")
	if m.status() != 0 {
		p.mu.Lock()
		p.responses[callID] = append(p.responses[callID], m)
		p.mu.Unlock()
		if m.status() >= 300 && m.cseqMethod() == "INVITE" {
			p.ackError(m)
		}
		return
	}
	back, err := m.viaAddr()
	if err != nil {
		return
	}
	send := func(b []byte) { _, _ = p.peer.conn.WriteToUDPAddrPort(b, back) }
	switch m.method() {
	case "REGISTER":
		user := ""
		if u := regexp.MustCompile(`sip:([^@;>]+)@`).FindStringSubmatch(m.header("To")); u != nil {
			user = u[1]
		}
		p.mu.Lock()
		p.contacts[user] = m.contactURI()
		p.mu.Unlock()
		send(response(m, 200, "OK", "reg", []string{"Contact: <" + m.contactURI() + ">;expires=3600", "Expires: 3600"}, ""))
	case "INVITE":
		p.mu.Lock()
		p.invites[callID] = m
		media, ok := p.media[callID]
		p.mu.Unlock()
		send(response(m, 180, "Ringing", "pbx", nil, ""))
		if ok {
			send(response(m, 200, "OK", "pbx", []string{"Contact: <sip:pbx@" + haPBXAddr.String() + ">",
				"Content-Type: application/sdp"}, offer(media)))
		}
	case "ACK":
		p.mu.Lock()
		p.acks[callID]++
		p.mu.Unlock()
	case "BYE":
		p.mu.Lock()
		p.byes[callID]++
		p.mu.Unlock()
		send(response(m, 200, "OK", "pbx", nil, ""))
	default:
		send(response(m, 200, "OK", "pbx", nil, ""))
	}
}

// ackError ACKs a final error response to the PBX's own INVITE (RFC 3261 section 17.1.1.3): to
// where the INVITE went, with its branch.
func (p *haPBX) ackError(res *sipMsg) {
	p.mu.Lock()
	inv := p.invites["out:"+res.header("Call-ID")]
	p.mu.Unlock()
	if inv == nil {
		return
	}
	target, err := uriAddr(strings.Fields(inv.start)[1])
	if err != nil {
		return
	}
	_, _ = p.peer.conn.WriteToUDPAddrPort(buildSIP("ACK "+strings.Fields(inv.start)[1]+" SIP/2.0", []string{
		"Via: " + inv.header("Via"),
		"From: " + inv.header("From"),
		"To: " + res.header("To"),
		"Call-ID: " + inv.header("Call-ID"),
		"CSeq: 1 ACK",
		"Max-Forwards: 70",
	}, ""), target)
}

// invite sends the PBX's own INVITE for callID to the Contact user registered, with an SDP offer
// of media, and returns where it went.
func (p *haPBX) invite(t testing.TB, user, callID string, media netip.AddrPort) netip.AddrPort {
	t.Helper()
	p.mu.Lock()
	contact := p.contacts[user]
	p.mu.Unlock()
	target, err := uriAddr(contact)
	if err != nil {
		t.Fatalf("contact of %s: %v", user, err)
	}
	msg := buildSIP("INVITE "+contact+" SIP/2.0", []string{
		"Via: SIP/2.0/UDP " + haPBXAddr.String() + ";branch=z9hG4bK" + strings.NewReplacer("@", "", ".", "").Replace(callID),
		"From: <sip:pbx@198.18.0.10>;tag=pbxout",
		"To: <sip:" + user + "@198.18.0.10>",
		"Call-ID: " + callID,
		"CSeq: 1 INVITE",
		"Contact: <sip:pbx@" + haPBXAddr.String() + ">",
		"Max-Forwards: 70",
		"Content-Type: application/sdp",
	}, offer(media))
	m, err := parseSIP(msg)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.invites["out:"+callID] = m
	p.mu.Unlock()
	p.peer.send(t, target, msg)
	return target
}

func (p *haPBX) answerWith(callID string, media netip.AddrPort) {
	p.mu.Lock()
	p.media[callID] = media
	p.mu.Unlock()
}

func (p *haPBX) invite0(callID string) *sipMsg {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.invites[callID]
}

func (p *haPBX) count(m map[string]int, callID string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return m[callID]
}

func (p *haPBX) got(callID string, code int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.responses[callID] {
		if r.status() == code {
			return true
		}
	}
	return false
}

func (p *haPBX) registered(user string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.contacts[user]
}

// rtpEnd is one end of a call's media: a socket that sends an RTP stream (20 ms apart, its own
// SSRC, sequence numbers from 1) to where its SDP was answered, and records every RTP packet
// that arrives, with when and from where.
type rtpEnd struct {
	conn *net.UDPConn
	addr netip.AddrPort
	ssrc uint32
	seq  atomic.Uint32 // the last sequence number sent
	stop chan struct{}
	once sync.Once // closes stop
	wg   sync.WaitGroup

	mu  sync.Mutex // guards got
	got []rtpArrival
}

type rtpArrival struct {
	at   time.Time
	seq  uint16
	ssrc uint32
	src  netip.AddrPort
}

func (l *haLab) rtpEnd(ns *netns, addr netip.AddrPort, ssrc uint32) *rtpEnd {
	l.t.Helper()
	c, err := ns.listenUDP(addr.String())
	if err != nil {
		l.t.Fatal(err)
	}
	e := &rtpEnd{conn: c, addr: addr, ssrc: ssrc, stop: make(chan struct{})}
	e.wg.Add(1)
	go e.read()
	l.t.Cleanup(func() {
		e.halt()
		c.Close()
		e.wg.Wait()
	})
	return e
}

func (e *rtpEnd) read() {
	defer e.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, src, err := e.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if n < 12 || buf[0]>>6 != 2 {
			continue
		}
		a := rtpArrival{at: time.Now(), seq: binary.BigEndian.Uint16(buf[2:]), ssrc: binary.BigEndian.Uint32(buf[8:]),
			src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port())}
		e.mu.Lock()
		e.got = append(e.got, a)
		e.mu.Unlock()
	}
}

// stream sends RTP to dst every 20 ms until halted.
func (e *rtpEnd) stream(dst netip.AddrPort) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		pkt := make([]byte, 12+160)
		pkt[0], pkt[1] = 0x80, 8
		binary.BigEndian.PutUint32(pkt[8:], e.ssrc)
		for {
			select {
			case <-e.stop:
				return
			case <-t.C:
			}
			seq := e.seq.Add(1)
			binary.BigEndian.PutUint16(pkt[2:], uint16(seq))
			binary.BigEndian.PutUint32(pkt[4:], seq*160)
			_, _ = e.conn.WriteToUDPAddrPort(pkt, dst)
		}
	}()
}

// halt stops the stream.
func (e *rtpEnd) halt() { e.once.Do(func() { close(e.stop) }) }

// flowStats is what arrived of one stream (by SSRC).
type flowStats struct {
	packets, dups int
	// maxGap is the longest time without a packet between from and to (counting the edges),
	// and gapEnd when it ended.
	maxGap time.Duration
	gapEnd time.Time
	after  int // packets after the mark
	srcs   map[netip.AddrPort]int
}

// stats returns what arrived of ssrc, its longest gap between from and to, and how many packets
// came after mark.
func (e *rtpEnd) stats(ssrc uint32, from, to, mark time.Time) flowStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := flowStats{srcs: map[netip.AddrPort]int{}}
	seen := map[uint16]bool{}
	last := from
	for _, a := range e.got {
		if a.ssrc != ssrc {
			continue
		}
		st.packets++
		st.srcs[a.src]++
		if seen[a.seq] {
			st.dups++
		}
		seen[a.seq] = true
		if a.at.After(mark) {
			st.after++
		}
		if a.at.Before(from) || a.at.After(to) {
			continue
		}
		if g := a.at.Sub(last); g > st.maxGap {
			st.maxGap, st.gapEnd = g, a.at
		}
		last = a.at
	}
	if g := to.Sub(last); g > st.maxGap {
		st.maxGap, st.gapEnd = g, to
	}
	return st
}

// count returns how many packets of ssrc arrived.
func (e *rtpEnd) count(ssrc uint32) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, a := range e.got {
		if a.ssrc == ssrc {
			n++
		}
	}
	return n
}
