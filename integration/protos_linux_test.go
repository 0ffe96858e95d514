package integration

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPROTOS drives sipcar with PROTOS c07-sip's test cases (an INVITE with an anomaly in one
// field, then its CANCEL) from the phone's namespace, over UDP and, separately, over TCP (a
// connection per case), to a PBX that counts what reaches it (protosPBX). With
// SIPCAR_PROTOS_DIR naming a directory of the PROTOS material all its cases run; without it, the
// suite generated after PROTOS's design (generateProtosSuite). Each transport makes two passes
// over the cases. Nothing may be lost: sipcar never panics, races or hangs (/readyz answers
// during and after the run), no call, media binding or new signalling binding is left, sipcar's
// heap and goroutines after the second pass are back to their level after the first once its
// transactions have expired (protosHeapMargin), and a normal call right after succeeds. The
// figures of each pass are logged as "figure" lines, a line per PROTOS group as "group" lines.
func TestPROTOS(t *testing.T) {
	t.Parallel()
	cases, source := protosCases(t)
	t.Logf("figure PROTOS: source %s: %s", source, protosSuiteSummary(cases))
	// The transports run at the same time, each in a lab of its own, inside this test's one
	// parallel slot: most of a run is waiting for sipcar's state to expire, which need not keep
	// a second slot from the other tests.
	var wg sync.WaitGroup
	for _, transport := range []string{"udp", "tcp"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(transport, func(t *testing.T) { testPROTOS(t, transport, cases) })
		}()
	}
	wg.Wait()
}

// protosCases returns the cases to run and where they come from.
func protosCases(t *testing.T) ([]protosCase, string) {
	t.Helper()
	dir := os.Getenv(protosDirEnv)
	if dir == "" {
		return generateProtosSuite(), "generated after PROTOS c07-sip's design (set " + protosDirEnv + " for the PROTOS material)"
	}
	cases, err := loadProtosDir(dir)
	if err != nil {
		t.Fatalf("%s=%s: %v", protosDirEnv, dir, err)
	}
	return cases, "the PROTOS c07-sip material in " + dir
}

// protosEnv configures sipcar for the run: no rate caps, so that every answer is seen, and no
// per-source caps on bindings, calls and ports, so that each case meets sipcar's handling of its
// anomaly rather than a cap (every TCP case comes from a port of its own, a binding each); short
// transaction and signalling lifetimes, so that what a case leaves goes soon; profiles on, for a
// garbage collection before each measure of the heap; info logs (a case can be 128 KiB); a
// doctor's history (a bounded cache of ended calls) that the first pass fills, so that the
// second measures leaks rather than the cache filling up.
var protosEnv = []string{
	"SIPCAR_MAX_MESSAGE_RATE=0", "SIPCAR_MAX_PREFIX_RATE=-1", "SIPCAR_MAX_ERROR_REPLY_RATE=0",
	"SIPCAR_MAX_BINDINGS_PER_SOURCE=0", "SIPCAR_MAX_CALLS_PER_SOURCE=-1", "SIPCAR_MAX_PORTS_PER_SOURCE=0",
	"SIPCAR_TRANSACTION_TIMEOUT=2s", "SIPCAR_SIGNALING_TTL=5s", "SIPCAR_PPROF=true", "SIPCAR_LOG_LEVEL=info",
	"SIPCAR_CALL_HISTORY=500",
}

// protosRingFor is how long the PBX lets an INVITE ring that no CANCEL ends.
const protosRingFor = 2 * time.Second

// Memory back to its baseline. The run makes two passes over the cases, and the baseline is
// sipcar's memory after the first, once what it left has expired: what a peak made sipcar
// allocate stays allocated without being a leak (Go's maps keep their buckets after deletes,
// the runtime keeps the descriptors of goroutines that ended: measured after the first pass over
// the PROTOS material, 3 to 6 MB more than before it, all in the transaction table's and the
// server map's maps and the runtime's goroutine descriptors), and the second pass reuses it.
// After the second pass the heap in use (read after a garbage collection, so it is what is
// live) may exceed the baseline by protosHeapMargin, and the goroutines not at all: a leak of
// what a case leaves (a transaction, a call, a binding, a goroutine) grows with each pass, and
// over 4,500 cases anything from about 450 bytes a case is more than the margin.
const protosHeapMargin = 2 << 20

// sipcar keeps a transaction 32 s after its final answer (for a 2xx's retransmissions), with
// the request's bytes, and its own answers up to two Timer B generations (64 s) for the ACKs
// they get: right after a pass over the PROTOS material its heap holds 60 to 95 MB, down to the
// level it keeps about 55 s later. The baseline is read protosExpiry after the first pass;
// after the second, memory is polled until it is back, for up to protosSettle.
const (
	protosExpiry = 70 * time.Second
	protosSettle = 150 * time.Second
)

func testPROTOS(t *testing.T, transport string, cases []protosCase) {
	l := newUpstreamLab(newTestbed(t))
	pbx := l.startProtosPBX(protosRingFor)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", protosEnv...)...)
	call := func(id string) error {
		if transport == "tcp" {
			return l.phoneCallTCP(l.plan.phone, id)
		}
		return l.phoneCall(netip.AddrPortFrom(l.plan.phone, 5090), id)
	}
	name := "PROTOS " + transport
	var exitedAt atomic.Value // when sipcar exited, if it did
	go func() {
		<-car.done
		exitedAt.Store(time.Now())
	}()
	died := func() (time.Time, bool) {
		at, ok := exitedAt.Load().(time.Time)
		return at, ok
	}
	profile := func(what string) string { return filepath.Join(l.dir, "sipcar", "heap-"+what+".pb.gz") }

	// Before anything: a normal call, its bindings gone.
	if err := call("call-before-" + transport); err != nil {
		t.Fatalf("the call before the run: %v", err)
	}
	idle := car.waitProtosIdle(t, 0, 30*time.Second)
	fresh := car.protosMemory(t)
	car.saveHeapProfile(t, profile("before"))
	t.Logf("figure %s [before]: %v; %s", name, fresh, idle)

	ready := car.watchReady(2 * time.Second)
	var notReady []string
	defer func() {
		if ready != nil {
			ready.stop()
		}
	}()

	// Pass 1, then the baseline once what it left has expired.
	first := l.protosPass(t, car, died, pbx, transport, 1, cases)
	idle = car.waitProtosIdle(t, len(idle.of("sip")), 60*time.Second)
	if wait := time.Until(first.end.Add(protosExpiry)); wait > 0 {
		time.Sleep(wait) // transactions have no observable count: their lifetime is known
	}
	base := car.protosMemory(t)
	car.saveHeapProfile(t, profile("baseline"))
	t.Logf("figure %s [baseline, after pass 1]: %v; %s", name, base, idle)

	// Pass 2, then memory back to the baseline.
	second := l.protosPass(t, car, died, pbx, transport, 2, cases)
	notReady, ready = ready.stop(), nil
	idle = car.waitProtosIdle(t, len(idle.of("sip")), 60*time.Second)
	after, settleErr := car.waitProtosMemory(base, protosSettle)
	t.Logf("figure %s [after pass 2]: %v, %v after the pass; %s", name, after, time.Since(second.end).Round(time.Second), idle)
	callErr := call("call-after-" + transport)
	t.Logf("figure %s: the call after: %s", name, outcome(callErr))
	if status, err := car.readyStatus(); err != nil || status != 200 {
		t.Errorf("/readyz after the run: %d %v; want 200", status, err)
	}
	car.checkLogClean(t)

	if len(notReady) > 0 {
		t.Errorf("/readyz did not answer 200 within 10 s %d times during the run: %s", len(notReady), strings.Join(notReady, "; "))
	}
	if settleErr != nil {
		car.saveHeapProfile(t, profile("after"))
		t.Errorf("%v (%v after pass 2; baseline after pass 1: %v); heap profiles (go tool pprof -base): %s and %s",
			settleErr, after, base, profile("baseline"), profile("after"))
	}
	if callErr != nil {
		t.Errorf("the call after the run: %v", callErr)
	}
	for _, p := range []protosPassResult{first, second} {
		p.check(t)
	}
}

// protosPassResult is what a pass over the cases did.
type protosPassResult struct {
	tally *protosTally
	pbx   *protosPBX
	valid int // the number of the valid case, -1 when there is none
	end   time.Time
}

// protosPass sends every case once over transport and logs the figures of the pass. died tells
// whether and when sipcar exited.
func (l *upstreamLab) protosPass(t *testing.T, car *sipcarProc, died func() (time.Time, bool), pbx *protosPBX,
	transport string, pass int, cases []protosCase) protosPassResult {
	t.Helper()
	name := fmt.Sprintf("PROTOS %s pass %d", transport, pass)
	tally := newProtosTally(transport, pass, cases)
	pbxBefore := pbx.counts()
	msBefore := car.metricsOr(t)
	start := time.Now()
	if transport == "tcp" {
		l.runProtosTCP(cases, pbx, tally)
	} else {
		l.runProtosUDP(cases, pbx, tally)
	}
	end := time.Now()
	right, rightErr := car.serverMap()

	r := tally.result()
	pc := pbx.counts().minus(pbxBefore)
	t.Logf("figure %s: %d cases in %v: INVITE sent %d (%d PDUs cut to a %d-byte datagram), send errors %d, connections closed by sipcar %d",
		name, r.cases, end.Sub(start).Round(time.Second), r.sent, r.truncated, maxUDPPayload, r.sendErrors, r.closed)
	t.Logf("figure %s: INVITE answered finally in %d cases, CANCEL in %d; probes answered %d; cases whose waits ran out %d; answers without a token %d",
		name, r.inviteAnswered, r.cancelAnswered, r.probesAnswered, r.waitedOut, r.unattributed)
	for _, line := range r.answerLines() {
		t.Logf("figure %s: answer %s", name, line)
	}
	t.Logf("figure %s: reached the PBX: %d datagrams, %d of the cases' messages, %d cases' INVITEs, %d probes; by kind: %s",
		name, pc.datagrams, pc.caseMessages, pc.caseInvites, pc.probes, pc.kinds())
	for _, line := range tally.groupLines(pbx) {
		t.Logf("group %s: %s", name, line)
	}
	if rightErr == nil {
		t.Logf("figure %s [right after]: calls %d, media ports in use %d, sip bindings %d", name,
			right.Calls, right.MediaPorts.InUse, len(right.of("sip")))
	}
	ms, msErr := car.tryMetrics()
	delta := func(metric string) float64 { return sumMetric(ms, metric) - sumMetric(msBefore, metric) }
	if msErr != nil {
		t.Logf("figure %s: sipcar's counters unreadable: %v", name, msErr)
	} else {
		t.Logf("figure %s: sipcar: received %.0f, forwarded %.0f, malformed %.0f, own responses %.0f; dropped in all (since start): %s",
			name, delta("sipcar_sip_messages_received_total"), delta("sipcar_sip_messages_forwarded_total"),
			delta("sipcar_sip_messages_malformed_total"), delta("sipcar_sip_responses_sent_total"), droppedLine(ms))
	}
	t.Logf("figure %s: UDP receive errors (buffers full) in sipcar's namespace since start: %d", name, udpRcvbufErrors(l.car))
	if at, ok := died(); ok {
		t.Fatalf("sipcar exited during %s (see its log); the cases sent in the 2 s before, not handled: %s",
			name, strings.Join(tally.inFlight(at), ", "))
	}
	valid := -1
	if len(cases) > 0 && cases[0].group == "valid" {
		valid = cases[0].num
	}
	return protosPassResult{tally: tally, pbx: pbx, valid: valid, end: end}
}

// check fails the test when the pass did not exercise sipcar as meant: the valid case must go
// through and be cancelled, and the probes (which sipcar forwards like any OPTIONS) come back.
func (p protosPassResult) check(t *testing.T) {
	t.Helper()
	r := p.tally.result()
	if p.valid >= 0 {
		o := p.tally.state(p.valid)
		at := p.pbx.sawInvite(p.tally.token("protos", p.valid))
		if o.inviteFinal != 487 || o.cancelFinal != 200 || !at {
			t.Errorf("pass %d: the valid case %d: INVITE answered %d, CANCEL %d, INVITE at the PBX %v; want 487, 200, true",
				p.tally.pass, p.valid, o.inviteFinal, o.cancelFinal, at)
		}
	}
	if r.probesAnswered < r.cases*9/10 {
		t.Errorf("pass %d: %d of %d probes answered: the pass did not exercise sipcar as meant (see the logs)", p.tally.pass, r.probesAnswered, r.cases)
	}
}

// protosMemory is sipcar's memory and goroutines, read after a garbage collection.
type protosMemory struct {
	heapInuse, rss, goroutines float64
}

func (m protosMemory) String() string {
	return fmt.Sprintf("heap in use %.2f MB, RSS %.1f MB, goroutines %.0f", m.heapInuse/1e6, m.rss/1e6, m.goroutines)
}

// protosMemory collects garbage in sipcar (its heap profile with gc=1) and reads its metrics.
func (s *sipcarProc) protosMemory(t *testing.T) protosMemory {
	t.Helper()
	m, err := s.tryProtosMemory()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (s *sipcarProc) tryProtosMemory() (protosMemory, error) {
	if _, err := s.get("/debug/pprof/heap?gc=1"); err != nil {
		return protosMemory{}, err
	}
	ms, err := s.tryMetrics()
	if err != nil {
		return protosMemory{}, err
	}
	return protosMemory{heapInuse: ms["go_memstats_heap_inuse_bytes"], rss: ms["process_resident_memory_bytes"],
		goroutines: ms["go_goroutines"]}, nil
}

// saveHeapProfile writes sipcar's heap profile (after a garbage collection) to path.
func (s *sipcarProc) saveHeapProfile(t *testing.T, path string) {
	t.Helper()
	b, err := s.get("/debug/pprof/heap?gc=1")
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		t.Errorf("heap profile: %v", err)
	}
}

// waitProtosMemory polls until the heap in use is within protosHeapMargin of base and the
// goroutines are no more than base's, and returns the last reading.
func (s *sipcarProc) waitProtosMemory(base protosMemory, timeout time.Duration) (protosMemory, error) {
	var last protosMemory
	var lastErr error
	deadline := time.Now().Add(timeout)
	for {
		m, err := s.tryProtosMemory()
		if err == nil {
			last = m
			if m.heapInuse <= base.heapInuse+protosHeapMargin && m.goroutines <= base.goroutines {
				return m, nil
			}
		}
		lastErr = err
		if time.Now().After(deadline) {
			if lastErr != nil {
				return last, fmt.Errorf("sipcar's memory unreadable: %w", lastErr)
			}
			goroutines, _ := s.get("/debug/pprof/goroutine?debug=1")
			return last, fmt.Errorf("sipcar's heap or goroutines not back to the baseline (+%d MB heap) within %v\n%s",
				protosHeapMargin>>20, timeout, firstLines(string(goroutines), 80))
		}
		time.Sleep(2 * time.Second)
	}
}

// waitProtosIdle waits until sipcar has no call and no media port in use, and sipBindings sip
// bindings at most, and returns the server map.
func (s *sipcarProc) waitProtosIdle(t *testing.T, sipBindings int, timeout time.Duration) serverMap {
	t.Helper()
	return s.waitMap(t, timeout, fmt.Sprintf("no call, no media port in use and at most %d sip bindings", sipBindings), func(m serverMap) bool {
		return m.Calls == 0 && m.MediaPorts.InUse == 0 && len(m.media()) == 0 && len(m.of("sip")) <= sipBindings
	})
}

// readyWatch polls /readyz while a run goes on and notes each time it did not answer 200 within
// 10 s (a request retried until then).
type readyWatch struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	fails []string
}

func (s *sipcarProc) watchReady(every time.Duration) *readyWatch {
	w := &readyWatch{stopc: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
			ok, state := poll(10*time.Second, func() (bool, string) {
				status, err := s.readyStatus()
				return err == nil && status == 200, fmt.Sprintf("%d %v", status, err)
			})
			if !ok {
				w.fails = append(w.fails, time.Now().Format("15:04:05")+" "+state)
			}
		}
	}()
	return w
}

// stop ends the watch and returns the failures.
func (w *readyWatch) stop() []string {
	close(w.stopc)
	w.wg.Wait()
	return w.fails
}

// droppedLine writes sipcar_sip_messages_dropped_total by reason.
func droppedLine(ms map[string]float64) string {
	var parts []string
	for k, v := range ms {
		if reason, ok := strings.CutPrefix(k, `sipcar_sip_messages_dropped_total{reason="`); ok {
			parts = append(parts, fmt.Sprintf("%s %.0f", strings.TrimSuffix(reason, `"}`), v))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// udpRcvbufErrors reads the UDP receive buffer errors of a namespace (/proc/net/snmp).
func udpRcvbufErrors(ns *netns) int {
	out, err := ns.command("cat", "/proc/net/snmp").Output()
	if err != nil {
		return -1
	}
	var head []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, h := range head {
			if h == "RcvbufErrors" && i < len(f) {
				var n int
				fmt.Sscan(f[i], &n)
				return n
			}
		}
	}
	return -1
}
