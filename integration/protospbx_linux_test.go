package integration

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// The PBX of TestPROTOS and the loose reading of SIP that it and the phone need: what sipcar
// forwards or answers to a PROTOS case may be far from RFC 3261 (it passes what it does not
// need to understand byte for byte), so neither side may insist on parsing it.

// looseMsg is a SIP message read as a PBX that must not choke on it reads one: a start line and
// header lines, whatever they hold.
type looseMsg struct {
	start string
	lines []string // header lines as received, without line ends
	raw   []byte
}

// parseLoose splits b into its start line and header lines (up to the first empty line).
func parseLoose(b []byte) looseMsg {
	head := b
	if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
		head = b[:i]
	} else if i := bytes.Index(b, []byte("\n\n")); i >= 0 {
		head = b[:i]
	}
	lines := strings.Split(string(head), "\n")
	for i := range lines {
		lines[i] = strings.TrimSuffix(lines[i], "\r")
	}
	return looseMsg{start: lines[0], lines: lines[1:], raw: b}
}

// headerLines returns the lines of a header (name case-insensitive, compact forms too), in order.
func (m looseMsg) headerLines(name string) []string {
	name = strings.ToLower(name)
	var out []string
	for _, l := range m.lines {
		n, _, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n = strings.ToLower(strings.TrimSpace(n))
		if full, ok := compactNames[n]; ok {
			n = full
		}
		if n == name {
			out = append(out, l)
		}
	}
	return out
}

// value returns the value of the first line of a header, or "".
func (m looseMsg) value(name string) string {
	ls := m.headerLines(name)
	if len(ls) == 0 {
		return ""
	}
	_, v, _ := strings.Cut(ls[0], ":")
	return strings.TrimSpace(v)
}

// status returns a response's status code, 0 for anything else.
func (m looseMsg) status() int {
	return wireMsg{raw: []byte(m.start)}.status()
}

// method returns a request's method (the start line's first word), "" for a response.
func (m looseMsg) method() string {
	if m.status() != 0 {
		return ""
	}
	meth, _, _ := strings.Cut(m.start, " ")
	return meth
}

// cseqMethod returns the method of the CSeq header, "" when it has none.
func (m looseMsg) cseqMethod() string {
	f := strings.Fields(m.value("CSeq"))
	if len(f) < 2 {
		return ""
	}
	return f[len(f)-1]
}

// protosToken finds the token of a case ("protosu10000123": UDP, pass 1, case 123) or of a probe
// ("probet20000123").
var protosToken = regexp.MustCompile(`(protos|probe)[ut][0-9][0-9]{7}`)

// tokenOf returns the first case or probe token in a message, "" when there is none.
func tokenOf(b []byte) string { return string(protosToken.Find(b)) }

// pbxMark is a header the PBX puts on its responses: the phone tells them from sipcar's own.
const pbxMark = "Server: protos-pbx"

// protosPBX is the PBX of TestPROTOS: a UDP SIP server at 198.18.0.10:5060 that counts what
// reaches it and answers like a PBX: an INVITE rings (180) until its CANCEL (200, then 487) or
// for ringFor (then 480 Temporarily Unavailable); OPTIONS and BYE get 200, ACK nothing, other
// methods 501. An INVITE whose Call-ID starts with "call-" is answered 200 with SDP: a normal
// call. A message without Via, Call-ID or CSeq cannot be answered and is only counted.
type protosPBX struct {
	conn    *net.UDPConn
	addr    netip.AddrPort
	ringFor time.Duration
	done    chan struct{}

	mu         sync.Mutex // guards the following
	datagrams  int
	byKind     map[string]int       // requests by method, "response", "unanswerable"
	caseMsgs   map[string]int       // messages per case token
	caseInvite map[string]bool      // case tokens whose INVITE arrived
	probes     int                  // messages with a probe token
	ringing    map[string]*ringing  // by dialog key
	invited    map[string]time.Time // dialog keys of INVITEs seen, for CANCELs after the final answer
}

type ringing struct {
	invite looseMsg
	to     netip.AddrPort
	since  time.Time
}

// startProtosPBX opens the PBX in the lab's pbx namespace; it stops in t.Cleanup.
func (l *upstreamLab) startProtosPBX(ringFor time.Duration) *protosPBX {
	l.t.Helper()
	addr := netip.AddrPortFrom(l.plan.pbx, 5060)
	c, err := l.pbx.listenUDP(addr.String())
	if err != nil {
		l.t.Fatal(err)
	}
	raiseSocketBuffers(c)
	p := &protosPBX{conn: c, addr: addr, ringFor: ringFor, done: make(chan struct{}),
		byKind: make(map[string]int), caseMsgs: make(map[string]int), caseInvite: make(map[string]bool),
		ringing: make(map[string]*ringing), invited: make(map[string]time.Time)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.ringTimeouts(stop)
	}()
	l.t.Cleanup(func() {
		close(stop)
		c.Close()
		<-p.done
		wg.Wait()
	})
	go p.serve()
	return p
}

// raiseSocketBuffers gives a test socket room for bursts of large datagrams.
func raiseSocketBuffers(c *net.UDPConn) {
	_ = c.SetReadBuffer(8 << 20)
	_ = c.SetWriteBuffer(8 << 20)
}

func (p *protosPBX) serve() {
	defer close(p.done)
	buf := make([]byte, 65535)
	for {
		n, src, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		p.handle(parseLoose(append([]byte(nil), buf[:n]...)), src)
	}
}

// handle counts a message and answers it.
func (p *protosPBX) handle(m looseMsg, src netip.AddrPort) {
	token := tokenOf(m.raw)
	method := m.method()
	p.mu.Lock()
	p.datagrams++
	switch {
	case strings.HasPrefix(token, "probe"):
		p.probes++
	case token != "":
		p.caseMsgs[token]++
		if method == "INVITE" {
			p.caseInvite[token] = true
		}
	}
	kind := method
	switch {
	case m.status() != 0:
		kind = "response"
	case !slices.Contains([]string{"INVITE", "CANCEL", "ACK", "OPTIONS", "BYE"}, method):
		kind = "other method"
	}
	p.byKind[kind]++
	p.mu.Unlock()
	if kind == "response" || method == "ACK" {
		return
	}
	to, ok := p.replyTo(m, src)
	if !ok {
		p.mu.Lock()
		p.byKind["unanswerable"]++
		p.mu.Unlock()
		return
	}
	key := m.value("Call-ID") + "\x00" + strings.Join(m.headerLines("Via"), "\x00")
	switch method {
	case "INVITE":
		if strings.HasPrefix(m.value("Call-ID"), "call-") {
			sdp := offer(netip.AddrPortFrom(p.addr.Addr(), 8000))
			p.send(to, p.response(m, 180, "Ringing", "", ""))
			p.send(to, p.response(m, 200, "OK", "Contact: <sip:pbx@"+p.addr.String()+">\r\nContent-Type: application/sdp", sdp))
			return
		}
		p.mu.Lock()
		p.invited[key] = time.Now()
		p.ringing[key] = &ringing{invite: m, to: to, since: time.Now()}
		p.mu.Unlock()
		p.send(to, p.response(m, 180, "Ringing", "", ""))
	case "CANCEL":
		p.mu.Lock()
		r := p.ringing[key]
		delete(p.ringing, key)
		_, known := p.invited[key]
		p.mu.Unlock()
		if !known {
			p.send(to, p.response(m, 481, "Call/Transaction Does Not Exist", "", ""))
			return
		}
		p.send(to, p.response(m, 200, "OK", "", ""))
		if r != nil {
			p.send(r.to, p.response(r.invite, 487, "Request Terminated", "", ""))
		}
	case "OPTIONS", "BYE":
		p.send(to, p.response(m, 200, "OK", "", ""))
	default:
		p.send(to, p.response(m, 501, "Not Implemented", "", ""))
	}
}

// replyTo is where a response to m goes: the top Via's sent-by (sipcar's binding), else where m
// came from. A message without Via, Call-ID or CSeq gets no response.
func (p *protosPBX) replyTo(m looseMsg, src netip.AddrPort) (netip.AddrPort, bool) {
	if len(m.headerLines("Via")) == 0 || m.value("Call-ID") == "" || m.value("CSeq") == "" {
		return netip.AddrPort{}, false
	}
	f := strings.Fields(m.value("Via"))
	if len(f) >= 2 {
		sentBy, _, _ := strings.Cut(f[1], ";")
		if a, err := netip.ParseAddrPort(sentBy); err == nil {
			return a, true
		}
	}
	return src, true
}

// response answers m: its Via, From, Call-ID and CSeq lines as they came, its To line with a tag
// added when it has none, the PBX's mark, extra header lines and body.
func (p *protosPBX) response(m looseMsg, code int, reason, extra, body string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "SIP/2.0 %d %s\r\n", code, reason)
	for _, v := range m.headerLines("Via") {
		b.WriteString(v + "\r\n")
	}
	for _, name := range []string{"From", "To", "Call-ID", "CSeq"} {
		for _, l := range m.headerLines(name) {
			if name == "To" && !strings.Contains(l, "tag=") {
				l += ";tag=pbx"
			}
			b.WriteString(l + "\r\n")
		}
	}
	b.WriteString(pbxMark + "\r\n")
	if extra != "" {
		b.WriteString(extra + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return b.Bytes()
}

func (p *protosPBX) send(to netip.AddrPort, msg []byte) {
	_, _ = p.conn.WriteToUDPAddrPort(msg, to)
}

// ringTimeouts ends the calls that rang for ringFor with 480, as a PBX does when nobody answers,
// until stop is closed.
func (p *protosPBX) ringTimeouts(stop <-chan struct{}) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			var due []*ringing
			p.mu.Lock()
			for k, r := range p.ringing {
				if now.Sub(r.since) >= p.ringFor {
					due = append(due, r)
					delete(p.ringing, k)
				}
			}
			for k, at := range p.invited {
				if now.Sub(at) > time.Minute {
					delete(p.invited, k)
				}
			}
			p.mu.Unlock()
			for _, r := range due {
				p.send(r.to, p.response(r.invite, 480, "Temporarily Unavailable", "", ""))
			}
		}
	}
}

// sawInvite reports whether the INVITE of a case reached the PBX.
func (p *protosPBX) sawInvite(token string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.caseInvite[token]
}

// pbxCounts is what reached the PBX.
type pbxCounts struct {
	datagrams, caseMessages, caseInvites, probes int
	byKind                                       map[string]int
}

func (p *protosPBX) counts() pbxCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := pbxCounts{datagrams: p.datagrams, caseInvites: len(p.caseInvite), probes: p.probes, byKind: make(map[string]int)}
	for _, n := range p.caseMsgs {
		c.caseMessages += n
	}
	for k, n := range p.byKind {
		c.byKind[k] = n
	}
	return c
}

// minus returns the counts since an earlier reading.
func (c pbxCounts) minus(before pbxCounts) pbxCounts {
	d := pbxCounts{datagrams: c.datagrams - before.datagrams, caseMessages: c.caseMessages - before.caseMessages,
		caseInvites: c.caseInvites - before.caseInvites, probes: c.probes - before.probes, byKind: make(map[string]int)}
	for k, n := range c.byKind {
		if n != before.byKind[k] {
			d.byKind[k] = n - before.byKind[k]
		}
	}
	return d
}

// kinds writes the counts by kind in a stable order.
func (c pbxCounts) kinds() string {
	var ks []string
	for k := range c.byKind {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s %d", k, c.byKind[k]))
	}
	return strings.Join(parts, ", ")
}
