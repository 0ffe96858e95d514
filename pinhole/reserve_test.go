package pinhole

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
)

// loopback runs f over IPv4 and IPv6 loopback: the reservations are real sockets.
func loopback(t *testing.T, f func(t *testing.T, addr netip.Addr)) {
	for _, a := range []string{"127.0.0.1", "::1"} {
		addr := netip.MustParseAddr(a)
		t.Run(a, func(t *testing.T) {
			if addr.Is6() {
				if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
					if os.Getenv("CI") == "true" {
						t.Fatalf("no IPv6 loopback: %v", err)
					}
					t.Skipf("no IPv6 loopback: %v", err)
				} else {
					c.Close()
				}
			}
			f(t, addr)
		})
	}
}

// freeRange finds n consecutive ports, starting even, that nothing on the host uses now.
func freeRange(t *testing.T, addr netip.Addr, n int) PortRange {
	t.Helper()
	for start := 31000; start < 39000; start += 2 * n {
		ok := true
		for p := start; p < start+n && ok; p++ {
			for _, network := range []string{"udp", "tcp"} {
				c, err := reserveOn(network, netip.AddrPortFrom(addr, uint16(p)))
				if err != nil {
					ok = false
					break
				}
				c.Close()
			}
		}
		if ok {
			return PortRange{uint16(start), uint16(start + n - 1)}
		}
	}
	t.Fatal("no free port range")
	return PortRange{}
}

func socketMap(t *testing.T, addr netip.Addr, media, sig PortRange) *Map {
	a := Addrs{IPv4: addr}
	if addr.Is6() {
		a = Addrs{IPv6: addr}
	}
	m, err := New(Config{Inside: a, Public: a, MediaPorts: media, SignalingPorts: sig})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// inUse reports whether binding network on a fails.
func inUse(network string, a netip.AddrPort) bool {
	c, err := reserveOn(network, a)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

func TestReserveSocketHoldsPorts(t *testing.T) {
	loopback(t, func(t *testing.T, addr netip.Addr) {
		r := freeRange(t, addr, 6)
		m := socketMap(t, addr, PortRange{r.First, r.First + 3}, PortRange{r.First + 4, r.First + 5})

		p := offer(t, m, "c", Inside, netip.AddrPortFrom(addr, 3000).String())
		rtcp := netip.AddrPortFrom(p.RTP.Addr(), p.RTCPPort)
		if !inUse("udp", p.RTP) || !inUse("udp", rtcp) {
			t.Fatalf("pair %v not held on the host", p)
		}
		if _, ok := m.LookupMedia(p.RTP.Port()).Reservation().(*net.UDPConn); !ok {
			t.Errorf("reservation is not a *net.UDPConn")
		}
		tcp, err := m.Signaling(Outside, "tls", netip.AddrPortFrom(addr, 5061), "c")
		if err != nil {
			t.Fatal(err)
		}
		if !inUse("tcp", tcp.Address()) {
			t.Fatalf("tcp port %v not held", tcp.Address())
		}
		// Bound, not listening: a connection is refused, not left hanging.
		if c, err := net.Dial("tcp", tcp.Address().String()); err == nil {
			c.Close()
			t.Errorf("connection to a reserved tcp port accepted")
		}
		udp, err := m.Signaling(Outside, "udp", netip.AddrPortFrom(addr, 5060), "c")
		if err != nil {
			t.Fatal(err)
		}
		if !inUse("udp", udp.Address()) {
			t.Fatalf("udp port %v not held", udp.Address())
		}

		m.ReleaseCall("c", ReasonCallEnded)
		m.Release(tcp, ReasonReleased)
		m.Release(udp, ReasonReleased)
		for _, a := range []netip.AddrPort{p.RTP, rtcp, udp.Address()} {
			if inUse("udp", a) {
				t.Errorf("udp %v still held after release", a)
			}
		}
		if inUse("tcp", tcp.Address()) {
			t.Errorf("tcp %v still held after release", tcp.Address())
		}
	})
}

func TestReserveSocketSkipsPortsInUse(t *testing.T) {
	loopback(t, func(t *testing.T, addr netip.Addr) {
		r := freeRange(t, addr, 6)
		m := socketMap(t, addr, PortRange{r.First, r.First + 3}, PortRange{r.First + 4, r.First + 5})
		// Another program holds the RTCP port of the first pair.
		squatter, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, r.First+1)))
		if err != nil {
			t.Fatal(err)
		}
		defer squatter.Close()
		for i := range 10 {
			p := offer(t, m, "c", Inside, netip.AddrPortFrom(addr, 3000).String())
			if p.RTP.Port() != r.First+2 {
				t.Fatalf("round %d: pair %v, want %d (the other is in use)", i, p, r.First+2)
			}
			if inUse("udp", netip.AddrPortFrom(addr, r.First)) {
				t.Fatalf("RTP port of the pair that failed left held")
			}
			tx := m.Begin("c2", netip.Addr{})
			if _, err := tx.Media(MediaRequest{From: Inside, RTP: netip.AddrPortFrom(addr, 3002)}); !errors.Is(err, ErrNoPorts) {
				t.Fatalf("second pair = %v, want ErrNoPorts", err)
			}
			tx.Rollback()
			m.ReleaseCall("c", ReasonCallEnded)
		}
	})
}

func TestReserveSocketNonLocalAddress(t *testing.T) {
	// A public address behind a 1:1 NAT is not the host's: the wildcard address is bound.
	r := freeRange(t, netip.IPv4Unspecified(), 2)
	c, err := ReserveSocket("udp", netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), r.First))
	if err != nil {
		t.Fatalf("reserve on a non-local address: %v", err)
	}
	defer c.Close()
	if !inUse("udp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.First)) {
		t.Errorf("port %d not held on the wildcard address", r.First)
	}
	if _, err := ReserveSocket("sctp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.First)); err == nil {
		t.Errorf("sctp reservation accepted")
	}
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no /proc/self/fd: %v", err)
		}
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestReserveSocketNoLeak(t *testing.T) {
	addr := netip.MustParseAddr("127.0.0.1")
	r := freeRange(t, addr, 40)
	m := socketMap(t, addr, PortRange{r.First, r.First + 29}, PortRange{r.First + 30, r.First + 39})
	before := openFDs(t)
	for i := range 500 {
		tx := m.Begin("c", netip.Addr{})
		tx.Media(MediaRequest{From: Inside, Index: 0, RTP: ap("127.0.0.1:3000")})
		tx.Media(MediaRequest{From: Inside, Index: 1, RTP: ap("127.0.0.1:3002")})
		if i%2 == 0 {
			tx.Rollback()
		} else if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		b, err := m.Signaling(Inside, []string{"udp", "tcp"}[i%2], ap("127.0.0.1:5060"), "c")
		if err != nil {
			t.Fatal(err)
		}
		if n := openFDs(t); i%2 == 1 && n != before+5 {
			t.Fatalf("round %d: %d descriptors open, want %d (2 pairs + 1)", i, n, before+5)
		}
		m.ReleaseCall("c", ReasonCallEnded)
		m.Release(b, ReasonReleased)
	}
	if n := openFDs(t); n != before {
		t.Errorf("%d descriptors open after 500 rounds, want %d", n, before)
	}
}
