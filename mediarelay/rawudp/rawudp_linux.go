package rawudp

import (
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Open opens a send-only raw UDP socket, IPv4 if v4 and IPv6 otherwise, non-blocking if
// nonblock. The caller owns the descriptor and closes it. It needs CAP_NET_RAW and
// CAP_NET_ADMIN (IP_TRANSPARENT, so that binding to loopback works while lo is down).
func Open(v4, nonblock bool) (int, error) {
	family, loopback := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Addr: netip.IPv6Loopback().As16()})
	level, transparent := unix.SOL_IPV6, unix.IPV6_TRANSPARENT
	if v4 {
		family, loopback = unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
		level, transparent = unix.SOL_IP, unix.IP_TRANSPARENT
	}
	typ := unix.SOCK_RAW | unix.SOCK_CLOEXEC
	if nonblock {
		typ |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(family, typ, unix.IPPROTO_UDP)
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
	if err := unix.SetsockoptInt(fd, level, transparent, 1); err != nil {
		return fail("IP_TRANSPARENT", err)
	}
	if err := unix.Bind(fd, loopback); err != nil {
		return fail("bind loopback", err)
	}
	return fd, nil
}

// SourceSpace is the room of the control message Source writes.
const SourceSpace = unix.SizeofCmsghdr + (unix.SizeofInet6Pktinfo+7)&^7

// Source writes the control message that makes src the source address of a datagram sent on
// a socket from Open (IP_PKTINFO's ipi_spec_dst, IPV6_PKTINFO's ipi6_addr) and returns its
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
