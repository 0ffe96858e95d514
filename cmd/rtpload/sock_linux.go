package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/rawudp"
)

func family(v4 bool) int {
	if v4 {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// openRaw opens the send-only socket every stream is sent from: a raw UDP socket (package
// rawudp), so that one socket sends from any endpoint's address and port through the route
// cache. rtpload writes the UDP header and names the source in a control message.
func openRaw(v4 bool) (int, error) {
	fd, err := rawudp.Open(v4, false)
	if err != nil {
		return -1, fmt.Errorf("%w (needs CAP_NET_RAW, CAP_NET_ADMIN)", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
	return fd, nil
}

// openFanIn opens the transparent socket the nftables rule steers every endpoint port to.
// Reads time out every 50 ms so the receiver notices when to stop.
func openFanIn(v4 bool) (int, uint16, error) {
	fd, err := unix.Socket(family(v4), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	set := func(level, opt int) error { return unix.SetsockoptInt(fd, level, opt, 1) }
	var errs []error
	if v4 {
		errs = append(errs, set(unix.SOL_IP, unix.IP_TRANSPARENT), set(unix.SOL_IP, unix.IP_RECVORIGDSTADDR))
	} else {
		errs = append(errs, set(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY), set(unix.SOL_IPV6, unix.IPV6_TRANSPARENT),
			set(unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR))
	}
	errs = append(errs, unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000}))
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if !v4 {
		sa = &unix.SockaddrInet6{}
	}
	errs = append(errs, unix.Bind(fd, sa))
	for _, err := range errs {
		if err != nil {
			unix.Close(fd)
			return -1, 0, fmt.Errorf("transparent socket (needs CAP_NET_ADMIN): %w", err)
		}
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	switch got := got.(type) {
	case *unix.SockaddrInet4:
		return fd, uint16(got.Port), nil
	case *unix.SockaddrInet6:
		return fd, uint16(got.Port), nil
	}
	unix.Close(fd)
	return -1, 0, fmt.Errorf("getsockname: unexpected %T", got)
}

// sendmmsg sends msgs on a blocking socket; a refused message is skipped and counted.
func sendmmsg(fd int, msgs []unix.Mmsghdr) (sent, failed int) {
	for len(msgs) > 0 {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
		switch {
		case e == unix.EINTR:
		case e != 0:
			failed++
			msgs = msgs[1:]
		case n == 0:
			return sent, failed + len(msgs)
		default:
			sent += int(n)
			msgs = msgs[n:]
		}
	}
	return sent, failed
}

// rawName is a raw socket's msg_name for dst: the address with port 0.
func rawName(dst netip.AddrPort) unix.RawSockaddrInet6 {
	var sa unix.RawSockaddrInet6
	if dst.Addr().Is4() {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		s4.Family = unix.AF_INET
		s4.Addr = dst.Addr().As4()
		return sa
	}
	sa.Family = unix.AF_INET6
	sa.Addr = dst.Addr().As16()
	return sa
}

func nameLen(dst netip.AddrPort) uint32 {
	if dst.Addr().Is4() {
		return unix.SizeofSockaddrInet4
	}
	return unix.SizeofSockaddrInet6
}

// origDst returns the address an IP(V6)_ORIGDSTADDR control message carries.
func origDst(ctrl []byte) netip.AddrPort {
	for len(ctrl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		if h.Len < unix.SizeofCmsghdr || h.Len > uint64(len(ctrl)) {
			break
		}
		data := ctrl[unix.SizeofCmsghdr:h.Len]
		switch {
		case h.Level == unix.SOL_IP && h.Type == unix.IP_ORIGDSTADDR && len(data) >= unix.SizeofSockaddrInet4:
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(data[4:8])), binary.BigEndian.Uint16(data[2:4]))
		case h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_ORIGDSTADDR && len(data) >= unix.SizeofSockaddrInet6:
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(data[8:24])), binary.BigEndian.Uint16(data[2:4]))
		}
		next := (h.Len + 7) &^ 7
		if next >= uint64(len(ctrl)) {
			break
		}
		ctrl = ctrl[next:]
	}
	return netip.AddrPort{}
}

// putUDPHeader writes the UDP header from src to dst, checksum included, in front of the
// payload at slot[headroom:headroom+n] and returns where the datagram starts.
func putUDPHeader(slot []byte, n int, src, dst netip.AddrPort) int {
	udp := slot[headroom-8 : headroom]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+n))
	udp[6], udp[7] = 0, 0
	var sum uint32
	add := func(b []byte) {
		for len(b) >= 2 {
			sum += uint32(binary.BigEndian.Uint16(b))
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint32(b[0]) << 8
		}
	}
	if src.Addr().Is4() {
		s, d := src.Addr().As4(), dst.Addr().As4()
		add(s[:])
		add(d[:])
	} else {
		s, d := src.Addr().As16(), dst.Addr().As16()
		add(s[:])
		add(d[:])
	}
	sum += 17 + uint32(8+n)
	add(slot[headroom-8 : headroom+n])
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	csum := ^uint16(sum)
	if csum == 0 {
		csum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], csum)
	return headroom - 8
}
