package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"
)

// The phone side of TestPROTOS: workers that send the cases to sipcar's public listener, each
// followed by a probe that tells when sipcar has handled them, and the tally of what came back.

// protosWorkers is how many cases are in flight at once. Each worker waits for its case to be
// handled before it sends the next, which paces the run: at most three datagrams per worker
// are on their way to sipcar, and a connection per worker is open (sipcar allows 64 per source).
const protosWorkers = 16

// Per-case waits. A probe (an OPTIONS sent after the teardown) comes back once sipcar has read
// the case's two PDUs: sipcar handles a socket's (or a connection's) messages in order, and so
// does the PBX. A case whose INVITE reached the PBX then waits for its final answer (the PBX's
// 487 or 480, or sipcar's 503 after SIPCAR_TRANSACTION_TIMEOUT). The limits only pace the run:
// over UDP what comes later is still counted, by the case's token.
const (
	protosProbeWait = 6 * time.Second
	protosFinalWait = 10 * time.Second
	protosQuiet     = 5 * time.Second // the end of a UDP run: this long without a message
)

// protosOutcome is what happened to one case at the phone.
type protosOutcome struct {
	c                        protosCase
	sent                     bool      // the INVITE went out (a datagram, or written to the connection)
	sentAt                   time.Time // when
	truncated                bool      // a PDU cut to the largest UDP datagram
	sendErr                  string
	closed                   bool // the connection was closed by sipcar
	inviteFinal, cancelFinal int  // the first final status of each, 0 when none came
	probeAnswered            bool
	waitedOut                bool // the case's waits ran out
}

// protosTally counts what the phone received in a pass over the cases.
type protosTally struct {
	transport string
	pass      int

	mu           sync.Mutex // guards the following
	cases        map[string]*protosOutcome
	answers      map[string]int            // "INVITE 400 from sipcar"
	warnings     map[string]map[string]int // sipcar's Warnings, by answer
	probeAnswers int
	unattributed int // answers with no token, counted for the case in flight
}

func newProtosTally(transport string, pass int, cases []protosCase) *protosTally {
	t := &protosTally{transport: transport, pass: pass, cases: make(map[string]*protosOutcome), answers: make(map[string]int),
		warnings: make(map[string]map[string]int)}
	for _, c := range cases {
		t.cases[t.token("protos", c.num)] = &protosOutcome{c: c}
	}
	return t
}

// token names case num (prefix "protos") or its probe (prefix "probe") in this pass.
func (t *protosTally) token(prefix string, num int) string {
	return fmt.Sprintf("%s%c%d%07d", prefix, t.transport[0], t.pass%10, num)
}

// outcome returns the record of a case.
func (t *protosTally) outcome(num int) *protosOutcome {
	return t.cases[t.token("protos", num)]
}

// record counts a message the phone received while case current was in flight.
func (t *protosTally) record(m looseMsg, current int) {
	token := tokenOf(m.raw)
	t.mu.Lock()
	defer t.mu.Unlock()
	if rest, ok := strings.CutPrefix(token, "probe"); ok {
		if o := t.cases["protos"+rest]; o != nil {
			o.probeAnswered = true
		}
		t.probeAnswers++
		return
	}
	o := t.cases[token]
	if o == nil {
		t.unattributed++
		o = t.cases[t.token("protos", current)]
	}
	status := m.status()
	if status == 0 {
		t.answers["request (not an answer)"]++
		return
	}
	from := "from sipcar"
	if bytes.Contains(m.raw, []byte(pbxMark)) {
		from = "from the PBX"
	}
	method := m.cseqMethod()
	if method != "INVITE" && method != "CANCEL" {
		method = "other CSeq"
	}
	key := fmt.Sprintf("%s %d %s", method, status, from)
	t.answers[key]++
	if w := m.value("Warning"); w != "" && from == "from sipcar" {
		if t.warnings[key] == nil {
			t.warnings[key] = make(map[string]int)
		}
		t.warnings[key][w[:min(len(w), 120)]]++
	}
	if status < 200 {
		return
	}
	switch method {
	case "INVITE", "other CSeq": // a CSeq whose method is an anomaly is the INVITE's
		if o.inviteFinal == 0 {
			o.inviteFinal = status
		}
	case "CANCEL":
		if o.cancelFinal == 0 {
			o.cancelFinal = status
		}
	}
}

// state returns a copy of a case's record.
func (t *protosTally) state(num int) protosOutcome {
	t.mu.Lock()
	defer t.mu.Unlock()
	return *t.outcome(num)
}

// update changes a case's record.
func (t *protosTally) update(num int, f func(*protosOutcome)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(t.outcome(num))
}

// probe is an OPTIONS from the phone at local over transport, in its own transaction, that the
// PBX answers.
func probe(transport string, local netip.AddrPort, token string) []byte {
	return buildSIP("OPTIONS sip:pbx@198.51.100.1 SIP/2.0", []string{
		"Via: SIP/2.0/" + strings.ToUpper(transport) + " " + local.String() + ";branch=z9hG4bK" + token,
		"From: <sip:phone@" + local.Addr().String() + ">;tag=" + token,
		"To: <sip:pbx@198.51.100.1>", "Call-ID: " + token, "CSeq: 1 OPTIONS", "Max-Forwards: 70",
	}, "")
}

// waitCase reads messages with next until the case is settled: its probe answered, and its
// INVITE answered finally or never at the PBX. It stops early when next reports the end of the
// connection (io.EOF).
func (t *protosTally) waitCase(num int, pbx *protosPBX, next func(deadline time.Time) (looseMsg, error)) (closed bool) {
	start := time.Now()
	var probed time.Time
	token := t.token("protos", num)
	for {
		o := t.state(num)
		now := time.Now()
		if o.probeAnswered && probed.IsZero() {
			probed = now
		}
		switch {
		case o.probeAnswered && (o.inviteFinal != 0 || !pbx.sawInvite(token)):
			return false
		case !o.probeAnswered && now.Sub(start) > protosProbeWait,
			o.probeAnswered && now.Sub(probed) > protosFinalWait:
			t.update(num, func(o *protosOutcome) { o.waitedOut = true })
			return false
		}
		m, err := next(now.Add(200 * time.Millisecond))
		switch {
		case err == nil:
			t.record(m, num)
		case errors.Is(err, io.EOF):
			return true
		}
	}
}

// runProtosUDP sends every case from a socket per worker at the phone's address and counts the
// answers until none has come for protosQuiet.
func (l *upstreamLab) runProtosUDP(cases []protosCase, pbx *protosPBX, t *protosTally) {
	queue := make(chan protosCase)
	var wg sync.WaitGroup
	for w := range protosWorkers {
		local := netip.AddrPortFrom(l.plan.phone, uint16(17000+w))
		c, err := l.phone.listenUDP(local.String())
		if err != nil {
			l.t.Fatal(err)
		}
		raiseSocketBuffers(c)
		defer c.Close()
		buf := make([]byte, 65535)
		next := func(deadline time.Time) (looseMsg, error) {
			_ = c.SetReadDeadline(deadline)
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return looseMsg{}, errNothing
			}
			return parseLoose(append([]byte(nil), buf[:n]...)), nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := 0
			for pc := range queue {
				last = pc.num
				token := t.token("protos", pc.num)
				invite, cancel := pc.pdus(protosFill{transport: "udp", token: token, local: local.Addr().String(), port: int(local.Port())})
				var sendErr error
				truncated := false
				for i, pdu := range [][]byte{invite, cancel, probe("udp", local, t.token("probe", pc.num))} {
					if len(pdu) > maxUDPPayload {
						pdu, truncated = pdu[:maxUDPPayload], true
					}
					if _, err := c.WriteToUDPAddrPort(pdu, sipcarListen); err != nil && sendErr == nil {
						sendErr = err
					} else if i == 0 && err == nil {
						t.update(pc.num, func(o *protosOutcome) { o.sent, o.sentAt = true, time.Now() })
					}
				}
				t.update(pc.num, func(o *protosOutcome) {
					o.truncated = truncated
					if sendErr != nil {
						o.sendErr = sendErr.Error()
					}
				})
				t.waitCase(pc.num, pbx, next)
			}
			for quiet := time.Now(); time.Since(quiet) < protosQuiet; {
				if m, err := next(time.Now().Add(time.Second)); err == nil {
					t.record(m, last)
					quiet = time.Now()
				}
			}
		}()
	}
	for _, c := range cases {
		queue <- c
	}
	close(queue)
	wg.Wait()
}

// runProtosTCP sends every case over a connection of its own from the phone's address, and
// closes it once the case is settled.
func (l *upstreamLab) runProtosTCP(cases []protosCase, pbx *protosPBX, t *protosTally) {
	queue := make(chan protosCase)
	var wg sync.WaitGroup
	for range protosWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pc := range queue {
				l.protosCaseTCP(pc, pbx, t)
			}
		}()
	}
	for _, c := range cases {
		queue <- c
	}
	close(queue)
	wg.Wait()
}

// protosCaseTCP runs one case over a new connection.
func (l *upstreamLab) protosCaseTCP(pc protosCase, pbx *protosPBX, t *protosTally) {
	conn, err := dialTCPFrom(l.phone, l.plan.phone, sipcarListen, 10*time.Second)
	if err != nil {
		t.update(pc.num, func(o *protosOutcome) { o.sendErr = "connect: " + err.Error() })
		return
	}
	defer conn.Close()
	local := netip.MustParseAddrPort(conn.LocalAddr().String())
	token := t.token("protos", pc.num)
	invite, cancel := pc.pdus(protosFill{transport: "tcp", token: token, local: local.Addr().String(), port: int(local.Port())})

	msgs := make(chan looseMsg, 16)
	readDone := make(chan error, 1)
	go func() { readDone <- readLooseStream(conn, msgs) }()
	for i, pdu := range [][]byte{invite, cancel, probe("tcp", local, t.token("probe", pc.num))} {
		if err := writeAll(conn, pdu); err != nil {
			t.update(pc.num, func(o *protosOutcome) { o.sendErr = fmt.Sprintf("write PDU %d: %v", i+1, err) })
			break
		}
		if i == 0 {
			t.update(pc.num, func(o *protosOutcome) { o.sent, o.sentAt = true, time.Now() })
		}
	}
	var readErr error
	ended := false
	closed := t.waitCase(pc.num, pbx, func(deadline time.Time) (looseMsg, error) {
		if ended {
			return looseMsg{}, io.EOF
		}
		select {
		case m, ok := <-msgs:
			if !ok {
				ended = true
				readErr = <-readDone
				return looseMsg{}, io.EOF
			}
			return m, nil
		case <-time.After(time.Until(deadline)):
			return looseMsg{}, errNothing
		}
	})
	if closed && readErr != nil && errors.Is(readErr, io.EOF) {
		t.update(pc.num, func(o *protosOutcome) { o.closed = true })
	}
	conn.Close()
	for range msgs { // the reader ends with the connection
	}
}

// readLooseStream reads messages framed by their Content-Length from a connection into msgs
// until it ends, and returns why (io.EOF when the far end closed it).
func readLooseStream(c net.Conn, msgs chan<- looseMsg) error {
	defer close(msgs)
	var buf []byte
	chunk := make([]byte, 64<<10)
	for {
		n, err := c.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for {
			buf = bytes.TrimLeft(buf, "\r\n")
			size := sipMessageLength(buf)
			if size == 0 {
				break
			}
			msgs <- parseLoose(append([]byte(nil), buf[:size]...))
			buf = buf[size:]
		}
		if err != nil {
			return err
		}
	}
}

// inFlight lists the cases whose INVITE went out in the two seconds before at and whose probe
// never came back: when sipcar died at at, the case that killed it is among them.
func (t *protosTally) inFlight(at time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var outs []*protosOutcome
	for _, o := range t.cases {
		if o.sent && !o.probeAnswered && !o.sentAt.After(at) && at.Sub(o.sentAt) <= 2*time.Second {
			outs = append(outs, o)
		}
	}
	sort.Slice(outs, func(i, j int) bool { return outs[i].c.num < outs[j].c.num })
	var out []string
	for _, o := range outs {
		out = append(out, fmt.Sprintf("%d (%s)", o.c.num, o.c.group))
	}
	return out
}

// protosResult sums a run up.
type protosResult struct {
	cases, sent, truncated, sendErrors, closed, probesAnswered, waitedOut, unattributed int
	inviteAnswered, cancelAnswered                                                      int
	answers                                                                             map[string]int
	warnings                                                                            map[string]map[string]int
}

func (t *protosTally) result() protosResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := protosResult{cases: len(t.cases), unattributed: t.unattributed, answers: make(map[string]int),
		warnings: make(map[string]map[string]int)}
	for _, o := range t.cases {
		for _, c := range []struct {
			n *int
			b bool
		}{{&r.sent, o.sent}, {&r.truncated, o.truncated}, {&r.sendErrors, o.sendErr != ""}, {&r.closed, o.closed},
			{&r.probesAnswered, o.probeAnswered}, {&r.waitedOut, o.waitedOut}, {&r.inviteAnswered, o.inviteFinal != 0},
			{&r.cancelAnswered, o.cancelFinal != 0}} {
			if c.b {
				*c.n++
			}
		}
	}
	for k, n := range t.answers {
		r.answers[k] = n
	}
	for k, ws := range t.warnings {
		r.warnings[k] = make(map[string]int)
		for w, n := range ws {
			r.warnings[k][w] = n
		}
	}
	return r
}

// answerLines writes the answers by kind, most frequent first.
func (r protosResult) answerLines() []string {
	var ks []string
	for k := range r.answers {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool {
		if r.answers[ks[i]] != r.answers[ks[j]] {
			return r.answers[ks[i]] > r.answers[ks[j]]
		}
		return ks[i] < ks[j]
	})
	var out []string
	for _, k := range ks {
		line := fmt.Sprintf("%s: %d", k, r.answers[k])
		var ws []string
		for w, n := range r.warnings[k] {
			ws = append(ws, fmt.Sprintf("%d with Warning: %s", n, w))
		}
		sort.Strings(ws)
		if len(ws) > 0 {
			line += " (" + strings.Join(ws, "; ") + ")"
		}
		out = append(out, line)
	}
	return out
}

// groupLines sums the outcomes up per PROTOS group: cases, INVITEs that reached the PBX, and the
// final answers to the INVITEs.
func (t *protosTally) groupLines(pbx *protosPBX) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	type sum struct {
		cases, reached int
		finals         map[int]int
	}
	var order []string
	sums := make(map[string]*sum)
	var outs []*protosOutcome
	for _, o := range t.cases {
		outs = append(outs, o)
	}
	sort.Slice(outs, func(i, j int) bool { return outs[i].c.num < outs[j].c.num })
	for _, o := range outs {
		s := sums[o.c.group]
		if s == nil {
			s = &sum{finals: make(map[int]int)}
			sums[o.c.group] = s
			order = append(order, o.c.group)
		}
		s.cases++
		if pbx.sawInvite(t.token("protos", o.c.num)) {
			s.reached++
		}
		s.finals[o.inviteFinal]++
	}
	var out []string
	for _, g := range order {
		s := sums[g]
		var codes []int
		for c := range s.finals {
			codes = append(codes, c)
		}
		sort.Ints(codes)
		var fs []string
		for _, c := range codes {
			name := fmt.Sprint(c)
			if c == 0 {
				name = "none"
			}
			fs = append(fs, fmt.Sprintf("%s %d", name, s.finals[c]))
		}
		out = append(out, fmt.Sprintf("%s: %d cases, INVITE at the PBX %d, INVITE answered %s", g, s.cases, s.reached, strings.Join(fs, ", ")))
	}
	return out
}
