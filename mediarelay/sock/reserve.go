package sock

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/libp2p/go-reuseport"
)

// ReserveUDP binds a UDP socket to addr, which holds the port for the caller until it closes
// the socket. When addr's address is not one of the host's (a public address behind a 1:1
// NAT), it binds the wildcard address of addr's family instead, same port. The families stay
// apart (an IPv6 reservation holds the IPv6 port only), so a reservation holds the port its
// user needs and no more.
func ReserveUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	if !addr.IsValid() {
		return nil, errors.New("reserve udp: no address")
	}
	c, err := onHostOrWildcard(addr, func(a netip.AddrPort) (*net.UDPConn, error) {
		return net.ListenUDP(network("udp", a), net.UDPAddrFromAddrPort(a))
	})
	if err != nil {
		return nil, fmt.Errorf("reserve udp %v: %w", addr, err)
	}
	return c, nil
}

// ReserveTCP opens a TCP listener on addr, with the fallback of [ReserveUDP]. It sets
// SO_REUSEPORT, so that a restarted sipcar binds while the old one drains.
func ReserveTCP(addr netip.AddrPort) (net.Listener, error) {
	if !addr.IsValid() {
		return nil, errors.New("reserve tcp: no address")
	}
	l, err := onHostOrWildcard(addr, func(a netip.AddrPort) (net.Listener, error) {
		return reuseport.Listen(network("tcp", a), a.String())
	})
	if err != nil {
		return nil, fmt.Errorf("reserve tcp %v: %w", addr, err)
	}
	return l, nil
}

// onHostOrWildcard opens a socket on addr, or on the wildcard address of its family when
// addr's address is not the host's (EADDRNOTAVAIL).
func onHostOrWildcard[S any](addr netip.AddrPort, open func(netip.AddrPort) (S, error)) (S, error) {
	s, err := open(addr)
	if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return s, err
	}
	wild := netip.IPv4Unspecified()
	if addr.Addr().Is6() {
		wild = netip.IPv6Unspecified()
	}
	return open(netip.AddrPortFrom(wild, addr.Port()))
}

// network returns proto ("udp", "tcp") with the family of a, so that a socket serves that
// family only.
func network(proto string, a netip.AddrPort) string {
	if a.Addr().Is4() {
		return proto + "4"
	}
	return proto + "6"
}
