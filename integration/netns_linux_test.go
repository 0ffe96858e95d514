package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// netns is a network namespace the suite created (/run/netns/<name>).
type netns struct {
	name string
}

// do runs fn on a thread that has entered the namespace: sockets fn opens live there for good,
// whichever goroutine uses them later. The thread returns to its own namespace before it serves
// other goroutines; if it cannot, it stays locked and Go discards it with its goroutine.
func (n *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own namespace: %w", err)
			return
		}
		defer orig.Close()
		f, err := os.Open(filepath.Join("/run/netns", n.name))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open namespace %s: %w", n.name, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", n.name, err)
			return
		}
		fnErr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave namespace %s: %w", n.name, err) // the thread stays locked
			return
		}
		runtime.UnlockOSThread()
		errc <- fnErr
	}()
	return <-errc
}

// dialContext dials from inside the namespace (an http.Transport's DialContext).
func (n *netns) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// listenUDP opens a UDP socket at addr inside the namespace.
func (n *netns) listenUDP(addr string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := n.do(func() error {
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp", ua)
		return err
	})
	return c, err
}

// command returns a command that runs argv inside the namespace.
func (n *netns) command(argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.name}, argv...)...)
}

// pids lists the processes inside the namespace.
func (n *netns) pids() []int {
	out, _ := exec.Command("ip", "netns", "pids", n.name).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// remove kills what still runs inside the namespace (what the test started there and did not
// stop itself, such as kamailio's children) and deletes it, with its veth ends.
func (n *netns) remove() error {
	for _, p := range n.pids() {
		if p == os.Getpid() {
			continue // a thread of the tests that entered it (see do) is no process to kill
		}
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if out, err := exec.Command("ip", "netns", "del", n.name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", n.name, err, out)
	}
	return nil
}

// ipCmd runs `ip args...`.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sysctl sets kernel parameters inside the namespace.
func (n *netns) sysctl(settings ...string) error {
	out, err := n.command(append([]string{"sysctl", "-qw"}, settings...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sysctl in %s: %v: %s", n.name, err, out)
	}
	return nil
}

// host creates a network namespace for one role of the test (phone, car, pbx...), with lo up
// and IPv6 off until an IPv6 address is given to one of its links. It is removed in t.Cleanup.
func (tb *testbed) host(role string) *netns {
	tb.t.Helper()
	n := &netns{name: tb.id + role}
	if err := ipCmd("netns", "add", n.name); err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Cleanup(func() {
		if err := n.remove(); err != nil {
			tb.t.Error(err)
		}
	})
	if err := ipCmd("-n", n.name, "link", "set", "lo", "up"); err != nil {
		tb.t.Fatal(err)
	}
	if err := n.sysctl("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		tb.t.Fatal(err)
	}
	return n
}

// end is one end of a veth link: a namespace, the interface's name in it, its addresses
// (CIDR).
type end struct {
	ns    *netns
	iface string
	addrs []string
}

// link joins two namespaces with a veth pair created directly inside them (nothing touches
// the root namespace) and brings both ends up with their addresses. IPv6 addresses skip
// duplicate address detection, so they are usable at once.
func (tb *testbed) link(a, b end) {
	tb.t.Helper()
	if err := ipCmd("link", "add", a.iface, "netns", a.ns.name, "type", "veth", "peer", "name", b.iface, "netns", b.ns.name); err != nil {
		tb.t.Fatal(err)
	}
	for _, e := range []end{a, b} {
		for _, addr := range e.addrs {
			args := []string{"-n", e.ns.name, "addr", "add", addr, "dev", e.iface}
			if strings.Contains(addr, ":") {
				if err := e.ns.sysctl("net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf."+e.iface+".disable_ipv6=0",
					"net.ipv6.conf."+e.iface+".accept_dad=0"); err != nil {
					tb.t.Fatal(err)
				}
				args = append(args, "nodad")
			}
			if err := ipCmd(args...); err != nil {
				tb.t.Fatal(err)
			}
		}
		if err := ipCmd("-n", e.ns.name, "link", "set", e.iface, "up"); err != nil {
			tb.t.Fatal(err)
		}
	}
}

// removeStaleNamespaces deletes the namespaces a killed run left behind: those named by the
// suite's prefix whose run (the pid in the name) is gone. A parallel run's are left alone.
func removeStaleNamespaces(w io.Writer) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := namespacePid(e.Name())
		if !ok || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // a live run's
		}
		n := &netns{name: e.Name()}
		if err := n.remove(); err != nil {
			fmt.Fprintln(w, "integration: stale namespace:", err)
			continue
		}
		fmt.Fprintln(w, "integration: removed stale namespace", n.name)
	}
}

// namespacePid parses the pid out of a namespace name made by the suite: "sct<pid>-...".
func namespacePid(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, namespacePrefix)
	if !ok {
		return 0, false
	}
	digits, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	return pid, err == nil && pid > 0
}
