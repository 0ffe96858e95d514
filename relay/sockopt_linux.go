package relay

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/libp2p/go-reuseport"
	"golang.org/x/sys/unix"
)

// The socket options of transparent mode live here: IP_TRANSPARENT lets a socket receive what
// TPROXY steers to it and send from addresses that are not the host's (so that a phone sees
// replies from the server it addressed); IP_RECVORIGDSTADDR tells a UDP socket where each
// datagram was going; SO_ORIGINAL_DST tells a TCP socket where a REDIRECTed connection was going.

// transparentControl sets SO_REUSEADDR/SO_REUSEPORT (go-reuseport), IP_TRANSPARENT and, for UDP,
// IP_RECVORIGDSTADDR, on both address families.
func transparentControl(network, address string, c syscall.RawConn) error {
	if err := reuseport.Control(network, address, c); err != nil {
		return err
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		v6 := network == "udp6" || network == "tcp6"
		if v6 {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
		if serr != nil {
			serr = fmt.Errorf("IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", serr)
			return
		}
		if network == "udp4" || network == "udp" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
		} else if network == "udp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func udpNetwork(a netip.AddrPort) string {
	if a.Addr().Is4() {
		return "udp4"
	}
	return "udp6"
}

// listenTransparentUDP opens the UDP listener TPROXY steers SIP to (the network is chosen by the
// address's family: a transparent socket serves one).
func listenTransparentUDP(_ string, addr netip.AddrPort) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: transparentControl}
	pc, err := lc.ListenPacket(context.Background(), udpNetwork(addr), addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen transparent udp %v: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// listenTransparentTCP opens the TCP listener TPROXY (or REDIRECT) steers SIP to.
func listenTransparentTCP(addr netip.AddrPort) (net.Listener, error) {
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	lc := net.ListenConfig{Control: transparentControl}
	l, err := lc.Listen(context.Background(), network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen transparent tcp %v: %w", addr, err)
	}
	return l, nil
}

// bindTransparentUDP opens a socket bound to a, which need not be the host's address: replies
// toward the inside leave from the address the phone was talking to.
func bindTransparentUDP(a netip.AddrPort) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: transparentControl}
	pc, err := lc.ListenPacket(context.Background(), udpNetwork(a), a.String())
	if err != nil {
		return nil, fmt.Errorf("bind transparent udp %v: %w", a, err)
	}
	return pc.(*net.UDPConn), nil
}

// origDst reads the IP_ORIGDSTADDR control message of a datagram.
func origDst(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8:
			// struct sockaddr_in: family, port (network order), address
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port), true
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= 24:
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(m.Data[8:24])), port), true
		}
	}
	return netip.AddrPort{}, false
}

// soOriginalDst returns where a REDIRECTed TCP connection was going (SO_ORIGINAL_DST), or ok
// false when the connection was not redirected (TPROXY keeps the original as the local address).
func soOriginalDst(c net.Conn) (netip.AddrPort, bool) {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false
	}
	var out netip.AddrPort
	v6 := addrPortOf(tc.LocalAddr()).Addr().Is6()
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
			port := binary.BigEndian.Uint16(be[:])
			out = netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr), port)
			return
		}
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
		if err != nil {
			return
		}
		// The result is a struct sockaddr_in laid over the 20 bytes of an ipv6_mreq.
		b := mreq.Multiaddr
		out = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
	})
	return out, out.IsValid()
}

// sipSocketBuffer is the receive buffer of SIP UDP sockets: enough for bursts of a few thousand
// messages while a reader is busy (the kernel default of about 200 KB overflows at ~1,500 calls/s).
const sipSocketBuffer = 4 << 20

// raiseBuffers sets a SIP UDP socket's buffers, beyond net.core.rmem_max when the process may
// (SO_RCVBUFFORCE, CAP_NET_ADMIN); failures leave the default, which still works.
func raiseBuffers(c *net.UDPConn) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sipSocketBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, sipSocketBuffer)
		}
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sipSocketBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, sipSocketBuffer)
		}
	})
}
