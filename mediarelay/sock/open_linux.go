package sock

import (
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"github.com/libp2p/go-reuseport"
	"golang.org/x/sys/unix"
)

// The descriptor-level sockets: the media relay polls them with its own epoll sets, and
// cmd/rtpload reads them with blocking batch calls, so they stay out of the Go netpoller.

// fdConn adapts a raw descriptor to syscall.RawConn so that go-reuseport can set its options
// on a socket outside the netpoller.
type fdConn int

func (c fdConn) Control(f func(fd uintptr)) error  { f(uintptr(c)); return nil }
func (c fdConn) Read(func(fd uintptr) bool) error  { return syscall.EINVAL }
func (c fdConn) Write(func(fd uintptr) bool) error { return syscall.EINVAL }

var _ syscall.RawConn = fdConn(0)

// udpSocket opens a UDP socket of the family (IPv6 ones IPv6 only).
func udpSocket(v4, nonblock bool) (int, error) {
	typ := unix.SOCK_DGRAM | unix.SOCK_CLOEXEC
	if nonblock {
		typ |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(family(v4), typ, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if !v4 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
	}
	return fd, nil
}

// OpenFanIn opens a transparent UDP socket (SO_REUSEPORT, IP_TRANSPARENT, IP_RECVORIGDSTADDR)
// on the wildcard address of its family (IPv4 if v4, else IPv6) and port, 0 to let the kernel
// choose one: an nftables TPROXY rule to that port steers whole port ranges to it, and
// [OrigDst] tells each datagram's destination. Further sockets opened on the same port share
// its datagrams (SO_REUSEPORT). It returns the descriptor and its port. It needs
// CAP_NET_ADMIN.
func OpenFanIn(v4, nonblock bool, port uint16) (fd int, bound uint16, err error) {
	fd, err = udpSocket(v4, nonblock)
	if err != nil {
		return -1, 0, err
	}
	fail := func(err error) (int, uint16, error) {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("fan-in socket: %w", err)
	}
	network, wildcard := "udp4", netip.IPv4Unspecified()
	if !v4 {
		network, wildcard = "udp6", netip.IPv6Unspecified()
	}
	if err := reuseport.Control(network, "", fdConn(fd)); err != nil {
		return fail(fmt.Errorf("SO_REUSEPORT: %w", err))
	}
	if err := setTransparent(fd, v4, true); err != nil {
		return fail(err)
	}
	if err := unix.Bind(fd, sockaddrOf(netip.AddrPortFrom(wildcard, port))); err != nil {
		return fail(fmt.Errorf("bind: %w", err))
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail(fmt.Errorf("getsockname: %w", err))
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		bound = uint16(sa.Port)
	case *unix.SockaddrInet6:
		bound = uint16(sa.Port)
	}
	return fd, bound, nil
}

// OpenPort opens a non-blocking UDP socket bound to ap, one of the host's addresses.
func OpenPort(ap netip.AddrPort) (int, error) {
	fd, err := udpSocket(ap.Addr().Is4(), true)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, sockaddrOf(ap)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %v: %w", ap, err)
	}
	return fd, nil
}

// OpenRaw opens a send-only raw UDP socket (see the package documentation for why it is cheap
// and receives nothing), IPv4 if v4 and IPv6 otherwise. Datagrams sent on it carry the UDP
// header [PutUDPHeader] wrote, go to [Addr.RawName], and leave from the address a [Source]
// control message names. It needs CAP_NET_RAW, and CAP_NET_ADMIN (IP_TRANSPARENT, so that
// binding to loopback works while lo is down).
func OpenRaw(v4, nonblock bool) (int, error) {
	fam, loopback := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16()})
	if v4 {
		fam, loopback = unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	}
	typ := unix.SOCK_RAW | unix.SOCK_CLOEXEC
	if nonblock {
		typ |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(fam, typ, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("raw socket: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("raw socket: %s: %w", what, err)
	}
	refuseAll := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(refuseAll)), Filter: &refuseAll[0]}); err != nil {
		return fail("SO_ATTACH_FILTER", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0) // the kernel's minimum
	if err := setTransparent(fd, v4, false); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("raw socket: %w", err)
	}
	if err := unix.Bind(fd, loopback); err != nil {
		return fail("bind loopback", err)
	}
	return fd, nil
}

// SourceSpace is the room of the control message [Source] writes.
const SourceSpace = unix.SizeofCmsghdr + (unix.SizeofInet6Pktinfo+unix.SizeofPtr-1)&^(unix.SizeofPtr-1)

// Source writes the control message that makes src the source address of a datagram sent on
// a socket from [OpenRaw] (IP_PKTINFO's ipi_spec_dst, IPV6_PKTINFO's ipi6_addr) and returns its
// length. src must be an address of the sending host (or one IP_TRANSPARENT may use) of the
// socket's family, not IPv4-mapped.
func Source(into *[SourceSpace]byte, src netip.Addr) int {
	*into = [SourceSpace]byte{}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&into[0]))
	data := unsafe.Pointer(&into[unix.SizeofCmsghdr])
	if src.Is4() {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		(*unix.Inet4Pktinfo)(data).Spec_dst = src.As4()
		return unix.CmsgSpace(unix.SizeofInet4Pktinfo)
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	(*unix.Inet6Pktinfo)(data).Addr = src.As16()
	return unix.CmsgSpace(unix.SizeofInet6Pktinfo)
}
