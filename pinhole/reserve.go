package pinhole

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
)

// ReserveFunc holds port addr for network ("udp" or "tcp") until the returned Closer is closed,
// so that nothing else on the host can take it meanwhile. An error means the port cannot be had
// (it is in use); the Map then tries another. The Map closes the Closer exactly once, when the
// binding is released or when an allocation it was part of is rolled back. A ReserveFunc is
// called concurrently, never with the Map's lock held.
type ReserveFunc func(network string, addr netip.AddrPort) (io.Closer, error)

// ReserveSocket is the default [ReserveFunc]: it binds a socket to addr (UDP, or TCP bound
// without listening, so the port is held but accepts nothing) and returns it. When addr's
// address is not one of the host's (a public address behind a 1:1 NAT), it binds the wildcard
// address of the same family instead. The Closer of a UDP reservation is a *net.UDPConn.
func ReserveSocket(network string, addr netip.AddrPort) (io.Closer, error) {
	c, err := reserveOn(network, addr)
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		wild := netip.IPv4Unspecified()
		if addr.Addr().Is6() {
			wild = netip.IPv6Unspecified()
		}
		c, err = reserveOn(network, netip.AddrPortFrom(wild, addr.Port()))
	}
	if err != nil {
		return nil, fmt.Errorf("reserve %s %v: %w", network, addr, err)
	}
	return c, nil
}

func reserveOn(network string, ap netip.AddrPort) (io.Closer, error) {
	switch network {
	case "udp":
		return net.ListenUDP(udpNetwork(ap), net.UDPAddrFromAddrPort(ap))
	case "tcp":
		return bindTCP(ap)
	}
	return nil, fmt.Errorf("unknown network %q", network)
}

// udpNetwork keeps an IPv6 wildcard reservation to IPv6, so that it holds the port the binding
// will use and no more.
func udpNetwork(ap netip.AddrPort) string {
	if ap.Addr().Is4() {
		return "udp4"
	}
	return "udp6"
}
