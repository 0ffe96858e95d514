package integration

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testbed is one test's hosts (network namespaces), the programs it runs in them and their
// logs. Everything it creates is removed in t.Cleanup, also when the test fails; when it fails,
// the logs are printed.
type testbed struct {
	t   *testing.T
	id  string // the prefix of its namespaces' names
	dir string // its working directory: logs, captures, generated files

	mu   sync.Mutex // guards the following
	logs []string   // directories whose files are printed on failure
}

// logDirEnv names a directory where test logs are kept after the run (they are otherwise
// removed with the test's temporary directory).
const logDirEnv = "INTEGRATION_LOGDIR"

// newTestbed prepares a test's testbed; the test needs root and a sipcar binary.
func newTestbed(t *testing.T) *testbed {
	t.Helper()
	needRoot(t)
	needProgram(t, "ip", "iproute2")
	tb := &testbed{t: t, id: fmt.Sprintf("%s%d", suite.prefix, suite.labs.Add(1))}
	if keep := os.Getenv(logDirEnv); keep != "" {
		name := regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_")
		dir, err := os.MkdirTemp(keep, name+"-")
		if err != nil {
			t.Fatal(err)
		}
		tb.dir = dir
		t.Cleanup(func() { t.Logf("logs kept in %s", dir) })
	} else {
		tb.dir = t.TempDir()
	}
	// Registered before anything else, so that it runs last: after every program stopped.
	t.Cleanup(tb.printLogsOnFailure)
	return tb
}

// workdir makes a directory for one program; its files are printed if the test fails.
func (tb *testbed) workdir(name string) string {
	tb.t.Helper()
	d := filepath.Join(tb.dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		tb.t.Fatal(err)
	}
	tb.mu.Lock()
	tb.logs = append(tb.logs, d)
	tb.mu.Unlock()
	return d
}

// logTail is how much of each log a failed test prints.
const logTail = 150

func (tb *testbed) printLogsOnFailure() {
	if !tb.t.Failed() {
		return
	}
	tb.mu.Lock()
	dirs := append([]string(nil), tb.logs...)
	tb.mu.Unlock()
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if e.IsDir() || strings.HasSuffix(e.Name(), ".pcap") || strings.HasSuffix(e.Name(), ".pem") || strings.HasSuffix(e.Name(), ".pb.gz") {
				continue
			}
			p := filepath.Join(d, e.Name())
			b, err := os.ReadFile(p)
			if err != nil || len(b) == 0 {
				continue
			}
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			cut := ""
			if len(lines) > logTail {
				cut = fmt.Sprintf(" (last %d of %d lines)", logTail, len(lines))
				lines = lines[len(lines)-logTail:]
			}
			tb.t.Logf("==== %s%s ====\n%s", p, cut, strings.Join(lines, "\n"))
		}
	}
}

// proc is a program running inside a namespace, its output going to a file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // combined stdout and stderr

	done    chan struct{} // closed when it exited
	waitErr error         // set before done is closed
}

// procOpts are the optional settings of [testbed.start].
type procOpts struct {
	dir string   // working directory (default: a fresh workdir named after the program)
	env []string // extra environment (KEY=value)
}

// start runs argv inside ns. The program is stopped in t.Cleanup if it still runs.
func (tb *testbed) start(ns *netns, name string, o procOpts, argv ...string) *proc {
	tb.t.Helper()
	if o.dir == "" {
		o.dir = tb.workdir(name)
	}
	logPath := filepath.Join(o.dir, name+".out")
	f, err := os.Create(logPath)
	if err != nil {
		tb.t.Fatal(err)
	}
	cmd := ns.command(argv...)
	cmd.Dir = o.dir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(cleanEnviron(), o.env...)
	// Its own process group: a signal to the test does not reach it, the test stops it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(f, "# %s: %s (in %s)\n", name, strings.Join(argv, " "), ns.name)
	if err := cmd.Start(); err != nil {
		f.Close()
		tb.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	tb.t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	return p
}

// cleanEnviron is the test's environment without sipcar's variables: each test sets its own.
func cleanEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SIPCAR_") {
			env = append(env, kv)
		}
	}
	return env
}

// exited reports whether the program has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the program to exit and returns its exit status (-1 if it was killed by a
// signal), or an error if it is still running after timeout.
func (p *proc) wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, fmt.Errorf("%s still running after %v", p.name, timeout)
	}
	if p.waitErr == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, fmt.Errorf("%s: %w", p.name, p.waitErr)
}

// stop sends sig, and SIGKILL if the program is still running 5 seconds later.
func (p *proc) stop(sig syscall.Signal) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// output returns what the program printed so far.
func (p *proc) output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// waitOutput waits until the program's output matches re, or fails the test.
func (p *proc) waitOutput(t testing.TB, re *regexp.Regexp, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(p.log)
		if re.Match(b) {
			return
		}
		if p.exited() {
			t.Fatalf("%s exited before printing %q:\n%s", p.name, re, firstLines(string(b), 60))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q within %v:\n%s", p.name, re, timeout, firstLines(string(b), 60))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually polls cond until it holds or timeout passes; then it fails the test with what
// cond said last. A real peer's timing is not under the test's control: the test waits for an
// observable state instead of sleeping.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen within %v; last state:\n%s", what, timeout, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// containsAny reports whether b contains any of subs.
func containsAny(b []byte, subs ...string) bool {
	for _, s := range subs {
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// writeFileMode writes a file with the given permissions.
func writeFileMode(path string, data []byte, mode os.FileMode) error {
	return os.WriteFile(path, data, mode)
}
