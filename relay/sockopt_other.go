//go:build !linux

package relay

import (
	"errors"
	"net"
	"net/netip"
)

// Transparent mode needs Linux (TPROXY, IP_TRANSPARENT, SO_ORIGINAL_DST).
var errNoTransparent = errors.New("transparent mode needs Linux")

func listenTransparentUDP(string, netip.AddrPort) (*net.UDPConn, error) {
	return nil, errNoTransparent
}
func listenTransparentTCP(netip.AddrPort) (net.Listener, error) { return nil, errNoTransparent }
func bindTransparentUDP(netip.AddrPort) (*net.UDPConn, error)   { return nil, errNoTransparent }
func origDst([]byte) (netip.AddrPort, bool)                     { return netip.AddrPort{}, false }
func soOriginalDst(net.Conn) (netip.AddrPort, bool)             { return netip.AddrPort{}, false }

func raiseBuffers(c *net.UDPConn) { _ = c.SetReadBuffer(4 << 20) }
