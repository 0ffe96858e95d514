package sock

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// free returns a UDP and TCP port free on the wildcard addresses of both families now.
func free(t *testing.T) uint16 {
	t.Helper()
	for range 100 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
		c.Close()
		ok := true
		for _, n := range []string{"udp4", "udp6", "tcp4", "tcp6"} {
			if inUse(n, netip.AddrPortFrom(netip.IPv6Unspecified(), port)) {
				ok = false
			}
		}
		if ok {
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// inUse reports whether binding network on a fails; a is taken as its family's wildcard when
// network names the other family.
func inUse(network string, a netip.AddrPort) bool {
	if (network == "udp4" || network == "tcp4") && !a.Addr().Is4() {
		a = netip.AddrPortFrom(netip.IPv4Unspecified(), a.Port())
	}
	if network == "udp4" || network == "udp6" {
		c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(a))
		if err != nil {
			return true
		}
		c.Close()
		return false
	}
	l, err := net.ListenTCP(network, net.TCPAddrFromAddrPort(a))
	if err != nil {
		return true
	}
	l.Close()
	return false
}

func TestReserveUDP(t *testing.T) {
	port := free(t)
	lo := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	c, err := ReserveUDP(lo)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.LocalAddr().(*net.UDPAddr).AddrPort(); got != lo {
		t.Errorf("bound to %v, want %v", got, lo)
	}
	if !inUse("udp4", lo) {
		t.Errorf("%v not held", lo)
	}
	if _, err := ReserveUDP(lo); err == nil {
		t.Errorf("a second reservation of %v succeeded", lo)
	}
	c.Close()
	if inUse("udp4", lo) {
		t.Errorf("%v still held after Close", lo)
	}
}

// A public address behind a 1:1 NAT is not the host's: the wildcard address of its family is
// bound, and the other family's port stays free.
func TestReserveNonLocalAddress(t *testing.T) {
	port := free(t)
	public := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), port)
	c, err := ReserveUDP(public)
	if err != nil {
		t.Fatalf("reserve udp on a non-local address: %v", err)
	}
	defer c.Close()
	if got := c.LocalAddr().(*net.UDPAddr).AddrPort(); got != netip.AddrPortFrom(netip.IPv4Unspecified(), port) {
		t.Errorf("bound to %v, want the IPv4 wildcard address", got)
	}
	if inUse("udp6", netip.AddrPortFrom(netip.IPv6Unspecified(), port)) {
		t.Errorf("the IPv6 port %d is held too", port)
	}
	l, err := ReserveTCP(public)
	if err != nil {
		t.Fatalf("reserve tcp on a non-local address: %v", err)
	}
	defer l.Close()
	if got := l.Addr().(*net.TCPAddr).AddrPort(); got != netip.AddrPortFrom(netip.IPv4Unspecified(), port) {
		t.Errorf("listening on %v, want the IPv4 wildcard address", got)
	}
}

// A TCP reservation is a listener: connections to it are accepted.
func TestReserveTCP(t *testing.T) {
	lo := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), free(t))
	l, err := ReserveTCP(lo)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.DialTimeout("tcp4", lo.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Errorf("accept: %v", err)
	}
	if c, err := ReserveUDP(netip.AddrPort{}); err == nil {
		c.Close()
		t.Errorf("udp reservation of no address succeeded")
	}
	if l, err := ReserveTCP(netip.AddrPort{}); err == nil {
		l.Close()
		t.Errorf("tcp reservation of no address succeeded")
	}
}
