package mediarelay

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockaddr is an address encoded once for sendmmsg (msg_name) and for the headers of the raw
// send scheme, so that the packet path never converts addresses.
type sockaddr struct {
	name    unix.RawSockaddrInet6 // a RawSockaddrInet4 in its first bytes when v4
	nameLen uint32                // 0: no address
	v4      bool
	ip      [16]byte // the first 4 bytes when v4
	port    [2]byte  // network order
}

func (s *sockaddr) set(ap netip.AddrPort) {
	*s = sockaddr{}
	if !ap.IsValid() {
		return
	}
	ap = unmapAddrPort(ap)
	binary.BigEndian.PutUint16(s.port[:], ap.Port())
	if ap.Addr().Is4() {
		s.v4 = true
		a4 := ap.Addr().As4()
		copy(s.ip[:], a4[:])
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&s.name))
		sa.Family = unix.AF_INET
		sa.Addr = a4
		*(*[2]byte)(unsafe.Pointer(&sa.Port)) = s.port
		s.nameLen = unix.SizeofSockaddrInet4
		return
	}
	s.ip = ap.Addr().As16()
	s.name.Family = unix.AF_INET6
	s.name.Addr = s.ip
	*(*[2]byte)(unsafe.Pointer(&s.name.Port)) = s.port
	s.nameLen = unix.SizeofSockaddrInet6
}

// rawName returns the address for a raw socket's msg_name: the same address with port 0
// (IPv6 raw sockets read the port as a protocol number).
func (s *sockaddr) rawName(into *unix.RawSockaddrInet6) {
	*into = s.name
	into.Port = 0
}

// addrPortFromRaw decodes a sockaddr_in or sockaddr_in6 written by the kernel, without
// allocating. IPv4-mapped IPv6 addresses are unmapped.
func addrPortFromRaw(p unsafe.Pointer) netip.AddrPort {
	switch (*unix.RawSockaddrInet6)(p).Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(p)
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(p)
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

// origDst finds the IP_ORIGDSTADDR or IPV6_ORIGDSTADDR control message in a recvmsg control
// buffer and returns the address it carries: where a TPROXY'd packet was sent.
func origDst(ctrl []byte) netip.AddrPort {
	for len(ctrl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		if h.Len < unix.SizeofCmsghdr || h.Len > uint64(len(ctrl)) {
			return netip.AddrPort{}
		}
		if (h.Level == unix.SOL_IP && h.Type == unix.IP_ORIGDSTADDR && h.Len >= unix.SizeofCmsghdr+unix.SizeofSockaddrInet4) ||
			(h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_ORIGDSTADDR && h.Len >= unix.SizeofCmsghdr+unix.SizeofSockaddrInet6) {
			return addrPortFromRaw(unsafe.Pointer(&ctrl[unix.SizeofCmsghdr]))
		}
		next := (h.Len + 7) &^ 7
		if next >= uint64(len(ctrl)) {
			break
		}
		ctrl = ctrl[next:]
	}
	return netip.AddrPort{}
}

// sockaddrOf encodes ap for bind(2).
func sockaddrOf(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}
