package mediarelay

import (
	"fmt"
	"net/netip"
	"syscall"

	reuseport "github.com/libp2p/go-reuseport"
	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/rawudp"
)

// Socket buffer sizes. Fan-in sockets carry every stream of a worker, so they get room for a
// scheduling hiccup at full rate; the FORCE variants pass net.core.*mem_max when privileged.
const (
	fanInRcvBuf = 8 << 20
	sendBuf     = 4 << 20
	portRcvBuf  = 256 << 10
)

// fdConn adapts a raw descriptor to syscall.RawConn so that go-reuseport can set its options
// on sockets that stay out of the Go netpoller (the workers poll them with their own epoll).
type fdConn int

func (c fdConn) Control(f func(fd uintptr)) error  { f(uintptr(c)); return nil }
func (c fdConn) Read(func(fd uintptr) bool) error  { return syscall.EINVAL }
func (c fdConn) Write(func(fd uintptr) bool) error { return syscall.EINVAL }

var _ syscall.RawConn = fdConn(0)

func family(v4 bool) int {
	if v4 {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// openFanIn opens one transparent SO_REUSEPORT socket of a worker group on the wildcard
// address and port (0: let the kernel choose, for the first of the group). It returns the
// socket and its port.
func openFanIn(v4 bool, port uint16) (int, uint16, error) {
	fd, err := unix.Socket(family(v4), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	fail := func(what string, err error) (int, uint16, error) {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("%s: %w", what, err)
	}
	network, wildcard := "udp4", netip.IPv4Unspecified()
	if !v4 {
		network, wildcard = "udp6", netip.IPv6Unspecified()
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail("IPV6_V6ONLY", err)
		}
	}
	if err := reuseport.Control(network, "", fdConn(fd)); err != nil {
		return fail("SO_REUSEPORT", err)
	}
	if v4 {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return fail("IP_TRANSPARENT", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1); err != nil {
			return fail("IP_RECVORIGDSTADDR", err)
		}
	} else {
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
			return fail("IPV6_TRANSPARENT", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1); err != nil {
			return fail("IPV6_RECVORIGDSTADDR", err)
		}
	}
	setBuffers(fd, fanInRcvBuf, sendBuf)
	if err := unix.Bind(fd, sockaddrOf(netip.AddrPortFrom(wildcard, port))); err != nil {
		return fail("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		port = uint16(sa.Port)
	case *unix.SockaddrInet6:
		port = uint16(sa.Port)
	}
	return fd, port, nil
}

// openRaw opens the send-only raw socket of the raw send scheme (package rawudp says why a
// raw UDP socket, and why it is cheap and receives nothing). The relay writes the UDP header
// and names the source address in the port's prebuilt control message (portSocket.srcInfo).
func openRaw(v4 bool) (int, error) {
	fd, err := rawudp.Open(v4, true)
	if err != nil {
		return -1, err
	}
	setBuffers(fd, 0, sendBuf)
	return fd, nil
}

// openPortSocket opens the socket of one relay port, bound to ap.
func openPortSocket(ap netip.AddrPort, rcvBuf int) (int, error) {
	v4 := ap.Addr().Is4()
	fd, err := unix.Socket(family(v4), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if !v4 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
	}
	setBuffers(fd, rcvBuf, 0)
	if err := unix.Bind(fd, sockaddrOf(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %v: %w", ap, err)
	}
	return fd, nil
}

// setBuffers raises socket buffers, with the FORCE variant first; failures leave the defaults,
// which work, only with less room for bursts.
func setBuffers(fd, rcv, snd int) {
	if rcv > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcv) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcv)
		}
	}
	if snd > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, snd) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, snd)
		}
	}
}
