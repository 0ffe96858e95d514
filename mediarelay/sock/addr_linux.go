package sock

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysName is an Addr as a message header's msg_name: a sockaddr_in in the first bytes of a
// sockaddr_in6 for IPv4.
type sysName struct {
	sa  unix.RawSockaddrInet6
	len uint32
}

func (n *sysName) set(a *Addr) {
	if a.fam == 4 {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&n.sa))
		sa.Family = unix.AF_INET
		sa.Addr = [4]byte(a.ip[:4])
		*(*[2]byte)(unsafe.Pointer(&sa.Port)) = a.port
		n.len = unix.SizeofSockaddrInet4
		return
	}
	n.sa.Family = unix.AF_INET6
	n.sa.Addr = a.ip
	*(*[2]byte)(unsafe.Pointer(&n.sa.Port)) = a.port
	n.len = unix.SizeofSockaddrInet6
}

// Name returns a as the msg_name of a message header, and its length (0 for no address).
func (a *Addr) Name() (unix.RawSockaddrInet6, uint32) { return a.sys.sa, a.sys.len }

// RawName returns a as the msg_name of a datagram sent on a raw socket ([OpenRaw]): the same
// address with port 0, since an IPv6 raw socket reads the port as a protocol number.
func (a *Addr) RawName() (unix.RawSockaddrInet6, uint32) {
	sa := a.sys.sa
	sa.Port = 0
	return sa, a.sys.len
}

// AddrPortOf decodes the sockaddr_in or sockaddr_in6 the kernel wrote at name (a message
// header's msg_name) without allocating; IPv4-mapped IPv6 addresses are unmapped, and other
// families give the zero AddrPort.
func AddrPortOf(name *unix.RawSockaddrInet6) netip.AddrPort {
	switch name.Family {
	case unix.AF_INET:
		return addrPort4((*unix.RawSockaddrInet4)(unsafe.Pointer(name)))
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&name.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(name.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

func addrPort4(sa *unix.RawSockaddrInet4) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
}

// sockaddrOf encodes ap for bind(2).
func sockaddrOf(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

func family(v4 bool) int {
	if v4 {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
