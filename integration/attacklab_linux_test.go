package integration

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// The attack tests (attack_linux_test.go) probe a running sipcar from the phone's namespace as
// an attacker on the internet would, with a legitimate phone calling during or right after each
// attack. This file holds their lab: the upstream topology with a PBX that answers by itself.

// Addresses on the phone's link for the attackers and a third party on the internet (the phone
// is 198.51.100.20).
var (
	attackerAddr   = netip.MustParseAddr("198.51.100.66")
	thirdPartyAddr = netip.MustParseAddr("198.51.100.77")
	insideAddr     = plan4.inside // sipcar's inside-facing address, 198.18.0.1
	sipcarListen   = netip.AddrPortFrom(publicAddr, 5060)
)

// attackLab is the upstream lab with an automatic PBX inside ([autoPBX], upstream over UDP)
// and sipcar started with the test's environment.
type attackLab struct {
	*upstreamLab
	sipcar *sipcarProc
	srv    *autoPBX // the PBX's SIP server (upstreamLab.pbx is its namespace)
}

// newAttackLab builds the lab; decide tells the PBX what to do with each INVITE (nil: answer
// every one).
func newAttackLab(t *testing.T, decide func(*sipMsg) pbxAction, env ...string) *attackLab {
	t.Helper()
	l := &attackLab{upstreamLab: newUpstreamLab(newTestbed(t))}
	l.srv = l.startAutoPBX(decide)
	l.sipcar = l.startSipcar(l.car, l.sipcarEnv("udp", env...)...)
	return l
}

// pbxAction is what the automatic PBX does with an INVITE.
type pbxAction int

const (
	pbxAnswer pbxAction = iota // 180 Ringing, then 200 OK with SDP
	pbxRing                    // 180 Ringing only: the call rings until CANCEL
	pbxDrop                    // nothing at all: a next hop that never answers
)

// autoPBX is a UDP SIP server at the PBX's address (198.18.0.10:5060) that answers every
// request by itself: REGISTER, OPTIONS, BYE and the like with 200, INVITE as its decide
// function says, CANCEL with 200 and 487. It records what it received.
type autoPBX struct {
	peer   *udpPeer
	decide func(*sipMsg) pbxAction
	done   chan struct{}

	mu        sync.Mutex // guards the following
	requests  map[string]int
	responses []*sipMsg // responses that reached the PBX (it sends requests to nobody)
	callIDs   map[string]int
	ringing   map[string]*sipMsg // INVITEs it rings, by Call-ID, for CANCEL
	bad       int                // datagrams that did not parse
}

// pbxMediaAddr is where the automatic PBX's SDP says its media is.
var pbxMediaAddr = netip.AddrPortFrom(pbxAddr, 8000)

func (l *upstreamLab) startAutoPBX(decide func(*sipMsg) pbxAction) *autoPBX {
	l.t.Helper()
	if decide == nil {
		decide = func(*sipMsg) pbxAction { return pbxAnswer }
	}
	c, err := l.pbx.listenUDP(netip.AddrPortFrom(pbxAddr, 5060).String())
	if err != nil {
		l.t.Fatal(err)
	}
	p := &autoPBX{peer: &udpPeer{conn: c, addr: netip.AddrPortFrom(pbxAddr, 5060)}, decide: decide, done: make(chan struct{}),
		requests: make(map[string]int), callIDs: make(map[string]int), ringing: make(map[string]*sipMsg)}
	l.t.Cleanup(func() {
		c.Close()
		<-p.done
	})
	go p.serve()
	return p
}

func (p *autoPBX) serve() {
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
			p.mu.Lock()
			p.bad++
			p.mu.Unlock()
			continue
		}
		p.handle(m)
	}
}

func (p *autoPBX) handle(m *sipMsg) {
	callID := m.header("Call-ID")
	p.mu.Lock()
	p.callIDs[callID]++
	if m.status() != 0 {
		p.responses = append(p.responses, m)
		p.mu.Unlock()
		return
	}
	method := m.method()
	p.requests[method]++
	p.mu.Unlock()
	back, err := m.viaAddr()
	if err != nil {
		return
	}
	send := func(b []byte) { _, _ = p.peer.conn.WriteToUDPAddrPort(b, back) }
	tag := "pbx" + strconv.Itoa(len(callID))
	switch method {
	case "ACK":
	case "INVITE":
		switch p.decide(m) {
		case pbxDrop:
		case pbxRing:
			p.mu.Lock()
			p.ringing[callID] = m
			p.mu.Unlock()
			send(response(m, 180, "Ringing", tag, nil, ""))
		case pbxAnswer:
			send(response(m, 180, "Ringing", tag, nil, ""))
			send(response(m, 200, "OK", tag, []string{"Contact: <sip:pbx@" + p.peer.addr.String() + ">",
				"Content-Type: application/sdp"}, offer(pbxMediaAddr)))
		}
	case "CANCEL":
		send(response(m, 200, "OK", tag, nil, ""))
		p.mu.Lock()
		inv := p.ringing[callID]
		delete(p.ringing, callID)
		p.mu.Unlock()
		if inv != nil {
			send(response(inv, 487, "Request Terminated", tag, nil, ""))
		}
	case "REGISTER":
		var extra []string
		if e := m.header("Expires"); e != "" {
			extra = append(extra, "Expires: "+e)
		}
		send(response(m, 200, "OK", tag, extra, ""))
	default:
		send(response(m, 200, "OK", tag, nil, ""))
	}
}

// seen returns how many messages of a Call-ID reached the PBX.
func (p *autoPBX) seen(callID string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.callIDs[callID]
}

// requestsOf returns how many requests of a method reached the PBX.
func (p *autoPBX) requestsOf(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[method]
}

// seenPrefix returns how many messages whose Call-ID starts with prefix reached the PBX.
func (p *autoPBX) seenPrefix(prefix string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for id, c := range p.callIDs {
		if strings.HasPrefix(id, prefix) {
			n += c
		}
	}
	return n
}

// gotResponses returns the responses that reached the PBX.
func (p *autoPBX) gotResponses() []*sipMsg {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*sipMsg(nil), p.responses...)
}

// attackFigures are what the closing note reports for an attack: sipcar's ports,
// descriptors, memory and goroutines.
type attackFigures struct {
	sipBindings int // signalling ports in use (sip bindings in /servermap)
	mediaPorts  int // relay ports in use
	fds         float64
	rss         float64 // bytes
	goroutines  float64
}

// figures reads sipcar's figures and logs them, one line each, under the attack's name and the
// moment (when). What cannot be read is logged as such and left zero: figures are taken before
// the assertions, also when sipcar is in trouble.
func (s *sipcarProc) figures(t *testing.T, attack, when string) attackFigures {
	t.Helper()
	var f attackFigures
	prefix := fmt.Sprintf("figure %s [%s]:", attack, when)
	if m, err := s.serverMap(); err != nil {
		t.Logf("%s /servermap unreadable: %v", prefix, err)
	} else {
		f.sipBindings, f.mediaPorts = len(m.of("sip")), m.MediaPorts.InUse
		t.Logf("%s signalling ports in use = %d", prefix, f.sipBindings)
		t.Logf("%s media ports in use = %d (free %d)", prefix, f.mediaPorts, m.MediaPorts.Free)
	}
	ms, err := s.tryMetrics()
	if err != nil {
		f.fds = float64(s.openFDs())
		t.Logf("%s /metrics unreadable: %v", prefix, err)
		t.Logf("%s process_open_fds = %.0f (from /proc)", prefix, f.fds)
		return f
	}
	f.fds, f.rss, f.goroutines = ms["process_open_fds"], ms["process_resident_memory_bytes"], ms["go_goroutines"]
	t.Logf("%s process_open_fds = %.0f", prefix, f.fds)
	t.Logf("%s process_resident_memory_bytes = %.0f (%.1f MB)", prefix, f.rss, f.rss/1e6)
	t.Logf("%s go_goroutines = %.0f", prefix, f.goroutines)
	return f
}

// tryMetrics reads /metrics like [sipcarProc.metrics], returning an error instead of failing.
func (s *sipcarProc) tryMetrics() (map[string]float64, error) {
	b, err := s.get("/metrics")
	if err != nil {
		return nil, err
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// metricsOr reads /metrics, or reports the error and returns an empty set (whose sums are 0).
func (s *sipcarProc) metricsOr(t *testing.T) map[string]float64 {
	t.Helper()
	ms, err := s.tryMetrics()
	if err != nil {
		t.Errorf("/metrics: %v", err)
		return map[string]float64{}
	}
	return ms
}

// openFDs counts sipcar's open descriptors in /proc (`ip netns exec` execs sipcar in place, so
// the process started is sipcar), for when its admin endpoint does not answer.
func (s *sipcarProc) openFDs() int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	return len(entries)
}

// dropped returns sipcar_sip_messages_dropped_total for a reason.
func dropped(ms map[string]float64, reason string) float64 {
	return sumMetric(ms, "sipcar_sip_messages_dropped_total", `reason="`+reason+`"`)
}

// raiseNoFile raises the test process's soft limit of open files to at least n (up to the hard
// limit), for tests that hold thousands of connections; it fails the test if the hard limit is
// lower.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < n {
		prerequisite(t, "RLIMIT_NOFILE hard limit %d; the test holds %d descriptors (raise it with ulimit -Hn)", lim.Max, n)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}
}

// outcome writes an error as a call's outcome for the figures.
func outcome(err error) string {
	if err == nil {
		return "completed"
	}
	return "FAILED: " + err.Error()
}
