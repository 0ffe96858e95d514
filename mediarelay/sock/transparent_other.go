//go:build !linux

package sock

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Transparent mode needs Linux: TPROXY, IP_TRANSPARENT, IP_RECVORIGDSTADDR, SO_ORIGINAL_DST.

// ListenTransparentUDP fails outside Linux.
func ListenTransparentUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	return nil, fmt.Errorf("listen transparent udp %v: transparent sockets need Linux: %w", addr, errors.ErrUnsupported)
}

// ListenTransparentTCP fails outside Linux.
func ListenTransparentTCP(addr netip.AddrPort) (net.Listener, error) {
	return nil, fmt.Errorf("listen transparent tcp %v: transparent sockets need Linux: %w", addr, errors.ErrUnsupported)
}

// OrigDst finds nothing outside Linux: no datagram was intercepted.
func OrigDst([]byte) netip.AddrPort { return netip.AddrPort{} }

// OriginalDst finds nothing outside Linux: no connection was redirected.
func OriginalDst(net.Conn) (netip.AddrPort, bool) { return netip.AddrPort{}, false }
