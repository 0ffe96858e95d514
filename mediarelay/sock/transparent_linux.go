package sock

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"github.com/libp2p/go-reuseport"
	"golang.org/x/sys/unix"
)

// setTransparent sets IP_TRANSPARENT (IPV6_TRANSPARENT) on fd and, for a UDP socket,
// IP_RECVORIGDSTADDR (IPV6_RECVORIGDSTADDR).
func setTransparent(fd int, v4, udp bool) error {
	level, transparent, origDst := unix.SOL_IPV6, unix.IPV6_TRANSPARENT, unix.IPV6_RECVORIGDSTADDR
	if v4 {
		level, transparent, origDst = unix.SOL_IP, unix.IP_TRANSPARENT, unix.IP_RECVORIGDSTADDR
	}
	if err := unix.SetsockoptInt(fd, level, transparent, 1); err != nil {
		return fmt.Errorf("IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
	}
	if udp {
		if err := unix.SetsockoptInt(fd, level, origDst, 1); err != nil {
			return fmt.Errorf("IP_RECVORIGDSTADDR: %w", err)
		}
	}
	return nil
}

// transparentControl is the net.ListenConfig Control of transparent sockets: SO_REUSEADDR and
// SO_REUSEPORT (go-reuseport), then setTransparent. The network names the family: "udp4",
// "udp6", "tcp4", "tcp6".
func transparentControl(network, address string, c syscall.RawConn) error {
	if err := reuseport.Control(network, address, c); err != nil {
		return err
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		v4 := network == "udp4" || network == "tcp4"
		serr = setTransparent(int(fd), v4, network == "udp4" || network == "udp6")
	})
	if err != nil {
		return err
	}
	return serr
}

// ListenTransparentUDP opens a transparent UDP socket bound to addr, which need not be one of
// the host's addresses: it receives what TPROXY steers to addr (each datagram's original
// destination in its control message, see [OrigDst]; read it with ReadMsgUDPAddrPort), and
// sends from addr. SO_REUSEPORT lets several sockets share the address.
func ListenTransparentUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: transparentControl}
	pc, err := lc.ListenPacket(context.Background(), network("udp", addr), addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen transparent udp %v: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// ListenTransparentTCP opens a transparent TCP listener on addr: it accepts the connections
// TPROXY (their local address is where they were going) or REDIRECT (see [OriginalDst])
// steers to it.
func ListenTransparentTCP(addr netip.AddrPort) (net.Listener, error) {
	lc := net.ListenConfig{Control: transparentControl}
	l, err := lc.Listen(context.Background(), network("tcp", addr), addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen transparent tcp %v: %w", addr, err)
	}
	return l, nil
}

// OrigDst returns the address an IP_ORIGDSTADDR or IPV6_ORIGDSTADDR control message in ctrl
// (a received datagram's control buffer) carries: where a TPROXY'd datagram was going,
// IPv4-mapped addresses unmapped. It returns the zero AddrPort when ctrl holds none. It does
// not allocate: the media relay calls it for every packet.
func OrigDst(ctrl []byte) netip.AddrPort {
	for len(ctrl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		hlen := uint64(h.Len)
		if hlen < unix.SizeofCmsghdr || hlen > uint64(len(ctrl)) {
			return netip.AddrPort{}
		}
		switch {
		case h.Level == unix.SOL_IP && h.Type == unix.IP_ORIGDSTADDR && hlen >= unix.SizeofCmsghdr+unix.SizeofSockaddrInet4:
			return addrPort4((*unix.RawSockaddrInet4)(unsafe.Pointer(&ctrl[unix.SizeofCmsghdr])))
		case h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_ORIGDSTADDR && hlen >= unix.SizeofCmsghdr+unix.SizeofSockaddrInet6:
			return AddrPortOf((*unix.RawSockaddrInet6)(unsafe.Pointer(&ctrl[unix.SizeofCmsghdr])))
		}
		next := (hlen + unix.SizeofPtr - 1) &^ (unix.SizeofPtr - 1) // CMSG_ALIGN
		if next >= uint64(len(ctrl)) {
			break
		}
		ctrl = ctrl[next:]
	}
	return netip.AddrPort{}
}

// OriginalDst returns where a REDIRECTed TCP connection was going (SO_ORIGINAL_DST), or ok
// false when c was not redirected (TPROXY keeps the original destination as the local
// address) or is no TCP connection. A connection that wraps another (a *tls.Conn, through its
// NetConn method) is looked through.
func OriginalDst(c net.Conn) (dst netip.AddrPort, ok bool) {
	if w, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = w.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false
	}
	local, _ := tc.LocalAddr().(*net.TCPAddr)
	v6 := local != nil && local.AddrPort().Addr().Unmap().Is6()
	_ = raw.Control(func(fd uintptr) {
		const soOriginalDst = 80 // SO_ORIGINAL_DST (linux/netfilter_ipv4.h), IP6T_SO_ORIGINAL_DST alike
		if v6 {
			// A struct sockaddr_in6 (28 bytes) laid over the 32 of an ip6_mtuinfo: family, port
			// (network order), flow info, address.
			info, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, soOriginalDst)
			if err != nil {
				return
			}
			var be [2]byte // the port as it lies in memory: network order
			binary.NativeEndian.PutUint16(be[:], info.Addr.Port)
			dst = netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr), binary.BigEndian.Uint16(be[:]))
			return
		}
		// A struct sockaddr_in laid over the 20 bytes of an ipv6_mreq.
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
		if err != nil {
			return
		}
		b := mreq.Multiaddr
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
	})
	return dst, dst.IsValid()
}
