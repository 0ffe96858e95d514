package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sippProc is a sipp run. sipp writes its logs (messages, errors, statistics) into its working
// directory, which the testbed prints when the test fails.
type sippProc struct {
	*proc
	dir string
}

// sippOpts describe one sipp run.
type sippOpts struct {
	scenario string // a file in testdata/ (or an absolute path), or "" with builtin
	builtin  string // sipp's own scenario (-sn), e.g. "uas"
	local    string // -i: the address it binds and writes into messages
	port     int    // -p: its SIP port (default 5060)
	media    int    // -mp: its media port (default 6000)
	remote   string // host:port it sends to; empty for a UAS
	tcp      bool   // -t t1 (one TCP connection)
	calls    int    // -m: it exits after this many calls (default 1)
	pauseMS  int    // -d: the length of a scenario's <pause/>
	echo     bool   // -rtp_echo: echo the RTP it receives
	service  string // -s: the user part of the Request-URI
	rtpPcap  bool   // generate rtp.pcap (2 s of PCMA) for play_pcap_audio
	extra    []string
}

// sipp starts sipp inside ns.
func (tb *testbed) sipp(ns *netns, name string, o sippOpts) *sippProc {
	tb.t.Helper()
	bin := needProgram(tb.t, "sipp", "sip-tester")
	dir := tb.workdir(name)
	if o.port == 0 {
		o.port = 5060
	}
	if o.media == 0 {
		o.media = 6000
	}
	if o.calls == 0 {
		o.calls = 1
	}
	args := []string{bin}
	if o.scenario != "" {
		p := o.scenario
		if !filepath.IsAbs(p) {
			var err error
			if p, err = filepath.Abs(filepath.Join("testdata", p)); err != nil {
				tb.t.Fatal(err)
			}
		}
		args = append(args, "-sf", p)
	} else {
		args = append(args, "-sn", o.builtin)
	}
	if o.remote != "" {
		args = append(args, o.remote)
	}
	args = append(args,
		"-i", o.local, "-mi", o.local, "-p", strconv.Itoa(o.port), "-mp", strconv.Itoa(o.media),
		"-m", strconv.Itoa(o.calls),
		"-nostdin", "-timeout", "60", "-timeout_error", "-recv_timeout", "20000",
		"-trace_err", "-trace_msg", "-trace_stat", "-stf", "stats.csv")
	if o.tcp {
		args = append(args, "-t", "t1")
	}
	if o.pauseMS > 0 {
		args = append(args, "-d", strconv.Itoa(o.pauseMS))
	}
	if o.echo {
		args = append(args, "-rtp_echo")
	}
	if o.service != "" {
		args = append(args, "-s", o.service)
	}
	if o.rtpPcap {
		if err := writeRTPPcap(filepath.Join(dir, "rtp.pcap"), 100); err != nil {
			tb.t.Fatal(err)
		}
	}
	args = append(args, o.extra...)
	return &sippProc{proc: tb.start(ns, name, procOpts{dir: dir}, args...), dir: dir}
}

// sippStats are the final counters of a sipp run (its -trace_stat file).
type sippStats struct {
	successful, failed int
	raw                map[string]string
}

// stats reads the last line of the run's statistics file.
func (s *sippProc) stats() (sippStats, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "stats.csv"))
	if err != nil {
		return sippStats{}, fmt.Errorf("sipp statistics: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 2 {
		return sippStats{}, fmt.Errorf("sipp statistics: no data line in %q", b)
	}
	head := strings.Split(lines[0], ";")
	last := strings.Split(lines[len(lines)-1], ";")
	st := sippStats{raw: make(map[string]string)}
	for i, h := range head {
		if i < len(last) {
			st.raw[h] = last[i]
		}
	}
	st.successful, _ = strconv.Atoi(st.raw["SuccessfulCall(C)"])
	st.failed, _ = strconv.Atoi(st.raw["FailedCall(C)"])
	return st, nil
}

// succeeded waits for sipp to exit and fails the test unless it exited 0 with calls
// successful calls and no failed one.
func (s *sippProc) succeeded(t testing.TB, timeout time.Duration, calls int) {
	t.Helper()
	code, err := s.wait(timeout)
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.stats()
	if err != nil {
		t.Fatalf("%s exited %d: %v", s.name, code, err)
	}
	if code != 0 || st.successful != calls || st.failed != 0 {
		t.Fatalf("%s: exit status %d, %d successful and %d failed calls; want 0, %d and 0 (see its logs below)",
			s.name, code, st.successful, st.failed, calls)
	}
}
