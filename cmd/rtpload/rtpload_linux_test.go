package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestThroughRelay runs rtpload against sipcar's media relay (the benchmark's relayd, fan-in)
// in two network namespaces, IPv4 and IPv6 calls together, at a rate far below saturation:
// every packet must come back, at the other endpoint of its call, on time. It fails if the
// UDP checksum is wrong (the relay's kernel drops the packet), if the source address is not
// the endpoint's (the relay latches and answers the wrong address, or the kernel drops a
// martian), or if the arrivals nftables counts or the timed ones go astray.
//
//	gen 198.18.0.2 2001:db8:a::2 (ga0) == (in0) 198.18.0.1 2001:db8:a::1 relay
//	gen 198.51.100.2 2001:db8:b::2 (gb0) == (out0) 198.51.100.1 2001:db8:b::1 relay
func TestThroughRelay(t *testing.T) {
	requirePrivilege(t, "ip", "nft", "go")
	bin := t.TempDir()
	for _, pkg := range []string{".", "../../integration/bench/relayd"} {
		out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v: %s", pkg, err, out)
		}
	}

	tag := fmt.Sprintf("sct%dl", os.Getpid())
	gen, relay := tag+"g", tag+"r"
	for _, ns := range []string{gen, relay} {
		mustRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	for _, l := range []struct{ relayDev, genDev, net4, net6 string }{
		{"in0", "ga0", "198.18.0.", "2001:db8:a::"},
		{"out0", "gb0", "198.51.100.", "2001:db8:b::"},
	} {
		mustRun(t, "ip", "link", "add", l.relayDev, "netns", relay, "type", "veth", "peer", "name", l.genDev, "netns", gen)
		for _, side := range []struct{ ns, dev, host string }{{relay, l.relayDev, "1"}, {gen, l.genDev, "2"}} {
			mustRun(t, "ip", "-n", side.ns, "addr", "add", l.net4+side.host+"/24", "dev", side.dev)
			mustRun(t, "ip", "-n", side.ns, "addr", "add", l.net6+side.host+"/64", "dev", side.dev, "nodad")
			mustRun(t, "ip", "-n", side.ns, "link", "set", side.dev, "up")
		}
	}

	var pairs strings.Builder
	for i := range 10 {
		fmt.Fprintf(&pairs, "198.18.0.2:%d 198.18.0.1:%d 198.51.100.2:%d 198.51.100.1:%d\n", 30000+2*i, 20000+4*i, 40000+2*i, 20002+4*i)
		fmt.Fprintf(&pairs, "[2001:db8:a::2]:%d [2001:db8:a::1]:%d [2001:db8:b::2]:%d [2001:db8:b::1]:%d\n", 31000+2*i, 21000+4*i, 41000+2*i, 21002+4*i)
	}
	pairsFile := filepath.Join(t.TempDir(), "pairs")
	if err := os.WriteFile(pairsFile, []byte(pairs.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	relayLog := filepath.Join(t.TempDir(), "relayd.log")
	logFile, err := os.Create(relayLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	relayd := exec.Command("ip", "netns", "exec", relay, filepath.Join(bin, "relayd"), "-pairs", pairsFile, "-mode", "fanin")
	relayd.Stderr = logFile
	if err := relayd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- relayd.Wait() }()
	t.Cleanup(func() {
		_ = relayd.Process.Signal(syscall.SIGTERM) // ip netns exec became relayd: it removes its table and exits
		<-exited
	})
	readLog := func() string { b, _ := os.ReadFile(relayLog); return string(b) }
	for waited := 0; !strings.Contains(readLog(), "calls"); waited++ {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("relayd ended (%v): %s", err, readLog())
		case <-time.After(20 * time.Millisecond): // polls for relayd's start-up line; nothing is timed
		}
		if waited == 1500 {
			t.Fatalf("relayd did not start: %s", readLog())
		}
	}

	out, err := exec.Command("ip", "netns", "exec", gen, filepath.Join(bin, "rtpload"), "-pairs", pairsFile,
		"-duration", "1s", "-warmup", "500ms", "-sample", "2", "-json").CombinedOutput()
	if err != nil {
		t.Fatalf("rtpload: %v: %s\nrelayd: %s", err, out, readLog())
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("rtpload output %q: %v", out, err)
	}
	t.Logf("%+v", r)
	if r.Streams != 40 || r.Sent == 0 || r.TimedSent == 0 {
		t.Fatalf("sent nothing to measure: %+v", r)
	}
	if r.Received != r.Sent || r.Lost != 0 || r.Misrouted != 0 || r.Stale != 0 || r.SendErrors != 0 {
		t.Errorf("at 2000 packets/s through the relay: sent %d, received %d, misrouted %d, stale %d, send errors %d; want every packet back where it belongs",
			r.Sent, r.Received, r.Misrouted, r.Stale, r.SendErrors)
	}
	if r.OnTime != r.TimedSent || r.LateOrLostPercent != 0 || r.P50us <= 0 {
		t.Errorf("timed streams: %d sent, %d on time, p50 %.0f us; want all on time with a latency", r.TimedSent, r.OnTime, r.P50us)
	}
}

// requirePrivilege skips (outside CI) or fails (in CI) a test that needs root and tools.
func requirePrivilege(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing prerequisites: %s", strings.Join(missing, ", "))
	}
	t.Skipf("needs %s (network namespaces)", strings.Join(missing, ", "))
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
