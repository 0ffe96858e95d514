package mediarelay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The lab: three network namespaces made by the test.
//
//	phone 198.18.0.2 2001:db8:a::2 --ph0 == in0-- sipcar 198.18.0.1 2001:db8:a::1
//	                                              sipcar 198.51.100.1 2001:db8:b::1 --out0 == rm0-- remote 198.51.100.2 2001:db8:b::2
//
// remote also has 203.0.113.2 on its loopback interface, its "home network" behind a NAT (see
// natRemote); sipcar has no route there.
type lab struct {
	phone, sipcar, remote string
}

var labCounter atomic.Int64

var mac = map[string]string{"ph0": "02:00:00:00:00:01", "in0": "02:00:00:00:00:02", "out0": "02:00:00:00:00:03", "rm0": "02:00:00:00:00:04"}

// requirePrivilege skips (outside CI) or fails (in CI) a test that needs root and iproute2.
func requirePrivilege(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
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

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func runStdin(t testing.TB, stdin, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func newLab(t testing.TB) *lab {
	t.Helper()
	requirePrivilege(t, "nft")
	prefix := fmt.Sprintf("sct%dm%d", os.Getpid(), labCounter.Add(1))
	l := &lab{phone: prefix + "p", sipcar: prefix + "s", remote: prefix + "r"}
	for _, ns := range []string{l.phone, l.sipcar, l.remote} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		// No duplicate address detection: link-local addresses would stay tentative for a
		// second, and neighbour discovery with them.
		run(t, "ip", "netns", "exec", ns, "sh", "-c",
			"echo 0 >/proc/sys/net/ipv6/conf/all/accept_dad; echo 0 >/proc/sys/net/ipv6/conf/default/accept_dad")
	}
	run(t, "ip", "link", "add", "in0", "netns", l.sipcar, "address", mac["in0"], "type", "veth", "peer", "name", "ph0", "netns", l.phone, "address", mac["ph0"])
	run(t, "ip", "link", "add", "out0", "netns", l.sipcar, "address", mac["out0"], "type", "veth", "peer", "name", "rm0", "netns", l.remote, "address", mac["rm0"])
	links := []struct{ ns, dev, peer, v4, v6 string }{
		{l.phone, "ph0", "in0", "198.18.0.2", "2001:db8:a::2"},
		{l.sipcar, "in0", "ph0", "198.18.0.1", "2001:db8:a::1"},
		{l.sipcar, "out0", "rm0", "198.51.100.1", "2001:db8:b::1"},
		{l.remote, "rm0", "out0", "198.51.100.2", "2001:db8:b::2"},
	}
	for _, a := range links {
		run(t, "ip", "-n", a.ns, "addr", "add", a.v4+"/24", "dev", a.dev)
		run(t, "ip", "-n", a.ns, "addr", "add", a.v6+"/64", "dev", a.dev, "nodad")
		run(t, "ip", "-n", a.ns, "link", "set", a.dev, "up")
	}
	// Static neighbours: address resolution right after a veth comes up loses its first
	// solicitation and retries a second later.
	for _, a := range links {
		for _, b := range links {
			if b.dev == a.peer {
				run(t, "ip", "-n", a.ns, "neigh", "replace", b.v4, "lladdr", mac[b.dev], "dev", a.dev, "nud", "permanent")
				run(t, "ip", "-n", a.ns, "neigh", "replace", b.v6, "lladdr", mac[b.dev], "dev", a.dev, "nud", "permanent")
			}
		}
	}
	run(t, "ip", "-n", l.remote, "addr", "add", "203.0.113.2/32", "dev", "lo")
	return l
}

// natRemote makes remote a NAT in front of its home network: packets from 203.0.113.2 leave
// as 198.51.100.2 with a source port from 41000-41099, as a home router's would.
func (l *lab) natRemote(t testing.TB) {
	runStdin(t, `table ip nat {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 203.0.113.2 oifname "rm0" meta l4proto udp snat to 198.51.100.2:41000-41099
	}
}
`, "ip", "netns", "exec", l.remote, "nft", "-f", "-")
}

// in runs fn on a thread inside namespace ns. Sockets fn opens stay in ns.
func in(t testing.TB, ns string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err // the thread stays locked and exits with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in namespace %s: %v", ns, err)
	}
}

// peer is a phone's or a remote party's UDP socket.
type peer struct {
	t    testing.TB
	conn *net.UDPConn
	addr netip.AddrPort
}

func (l *lab) listen(t testing.TB, ns, addr string) *peer {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	var conn *net.UDPConn
	var err error
	in(t, ns, func() { conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap)) })
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &peer{t: t, conn: conn, addr: ap}
}

func (p *peer) send(to netip.AddrPort, b []byte) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(b, to); err != nil {
		p.t.Fatalf("send %v -> %v: %v", p.addr, to, err)
	}
}

// recv returns the next datagram and its source. The deadline only keeps a broken relay from
// hanging the test.
func (p *peer) recv() ([]byte, netip.AddrPort) {
	p.t.Helper()
	buf := make([]byte, 2048)
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := p.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		p.t.Fatalf("%v: receive: %v", p.addr, err)
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

// expect receives the next datagram and checks its payload and source.
func (p *peer) expect(want []byte, from netip.AddrPort) {
	p.t.Helper()
	got, src := p.recv()
	if string(got) != string(want) {
		p.t.Fatalf("%v received %x from %v, want %x", p.addr, got, src, want)
	}
	if src != from {
		p.t.Fatalf("%v received its packet from %v, want %v", p.addr, src, from)
	}
}

// relayMode is one way of running the relay; every namespace test runs in each.
type relayMode struct {
	name string
	mode Mode
	send SendScheme
}

var relayModes = []relayMode{
	{"fanin-raw", ModeFanIn, SendRaw},
	{"fanin-perport", ModeFanIn, SendPerPort},
	{"fallback", ModeFallback, SendRaw},
	// The default: fan-in, and the ports' own sockets read too.
	{"auto", ModeAuto, SendRaw},
}

// startRelay creates a relay in the sipcar namespace and runs it until the test ends.
func (l *lab) startRelay(t testing.TB, m relayMode, cfg Config) *Relay {
	t.Helper()
	r := l.newRelay(t, m, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// newRelay creates a relay in the sipcar namespace; the caller runs it. Cleanup closes it.
func (l *lab) newRelay(t testing.TB, m relayMode, cfg Config) *Relay {
	t.Helper()
	if cfg.PortMin == 0 {
		cfg.PortMin, cfg.PortMax = 20000, 20999
	}
	if cfg.Workers == 0 {
		cfg.Workers = 1 // one socket: packets keep the order they were sent in
	}
	cfg.Mode, cfg.FanInSend = m.mode, m.send
	var r *Relay
	var err error
	in(t, l.sipcar, func() { r, err = New(cfg) })
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if got, want := r.FanIn(), m.mode != ModeFallback; got != want {
		t.Fatalf("FanIn() = %v, want %v", got, want)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// reserve reserves the relay ports of spec and closes them when the test ends.
func reserve(t testing.TB, r *Relay, spec StreamSpec) {
	t.Helper()
	for _, ls := range []LegSpec{spec.A, spec.B} {
		addrs := []netip.AddrPort{ls.RTP}
		if !ls.Mux {
			addrs = append(addrs, ls.RTCP)
		}
		for _, a := range addrs {
			c, err := r.Reserve("udp", a)
			if err != nil {
				t.Fatalf("Reserve: %v", err)
			}
			t.Cleanup(func() { c.Close() })
		}
	}
}

func addStream(t testing.TB, r *Relay, spec StreamSpec) *Stream {
	t.Helper()
	reserve(t, r, spec)
	s, err := r.AddStream(spec)
	if err != nil {
		t.Fatalf("AddStream: %v", err)
	}
	return s
}

// family holds the addresses of one IP family in the lab.
type ipFamily struct {
	name                               string
	phone, sipcarIn, sipcarOut, remote string
}

var families = []ipFamily{
	{"ipv4", "198.18.0.2", "198.18.0.1", "198.51.100.1", "198.51.100.2"},
	{"ipv6", "2001:db8:a::2", "2001:db8:a::1", "2001:db8:b::1", "2001:db8:b::2"},
}

func (f ipFamily) at(host string, port int) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(host), uint16(port))
}
