//go:build !linux

package pinhole

import (
	"io"
	"net"
	"net/netip"
)

// bindTCP holds a TCP port with a listener: outside Linux, binding without listening is not
// worth the platform code.
func bindTCP(ap netip.AddrPort) (io.Closer, error) {
	network := "tcp4"
	if ap.Addr().Is6() {
		network = "tcp6"
	}
	return net.ListenTCP(network, net.TCPAddrFromAddrPort(ap))
}
