package mediarelay

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// The probe's temporary veth pair: probeOuter is the end the probe sends on, probeInner the
// bridge's new port. Fixed names, so that a pair left by a run that died mid-probe is deleted
// by the next start.
const (
	probeOuter = "sipcarprobe0"
	probeInner = "sipcarprobe1"
)

// probeWait is how long a probe waits for its packet; it resends every probeResend. A bridge
// port that is not forwarding by then (spanning tree's listening and learning states last
// 15 s each) leaves the bridge to the ports' sockets.
const (
	probeWait   = time.Second
	probeResend = 100 * time.Millisecond
)

// probeOutcome is what a probe of one bridge found.
type probeOutcome struct {
	path   Path
	reason string
	detail string
}

// probeBridge sends a UDP packet to dst (one of this host's addresses, at a free relay port)
// into the bridge br through a temporary veth port, as a container on the bridge would send
// media, and reports which socket got it: a fan-in socket (fan-in works through this bridge),
// a socket bound to dst and the port, as every relay port's is (the rule matched but the
// packet bypassed fan-in), or none. It needs CAP_NET_ADMIN (the veth pair) and CAP_NET_RAW
// (the frame is written whole, on a packet socket); without them, or when anything else
// fails, the bridge is left to the ports' sockets, which receive whatever reaches them.
func (r *Relay) probeBridge(nl *rtnl, br linkInfo, dst netip.Addr) probeOutcome {
	failed := func(format string, args ...any) probeOutcome {
		return probeOutcome{path: PathPerPort, reason: "probe-failed",
			detail: "a socket per relay port, since the probe could not run: " + fmt.Sprintf(format, args...)}
	}
	if !dst.IsValid() {
		return failed("the side has no address to probe")
	}
	fam := 0
	if !dst.Is4() {
		fam = 1
	}
	var fanIn []int
	for _, w := range r.workers {
		if w.fanIn[fam] >= 0 {
			fanIn = append(fanIn, w.fanIn[fam])
		}
	}
	if len(fanIn) == 0 {
		return failed("no fan-in socket for %v", dst)
	}
	src, err := probeSource(nl, br, dst)
	if err != nil {
		return failed("%v", err)
	}
	// The port's own socket, as Reserve opens it: where a packet that bypasses fan-in goes.
	var plain int
	var port uint16
	for p := r.cfg.PortMin; ; p++ {
		plain, err = sock.OpenPort(netip.AddrPortFrom(dst, p))
		if err == nil {
			port = p
			break
		}
		if p == r.cfg.PortMax || p-r.cfg.PortMin > 64 {
			return failed("no free relay port on %v: %v", dst, err)
		}
	}
	defer unix.Close(plain)

	if err := nl.delLink(probeOuter); err != nil {
		return failed("%v", err)
	}
	// The pair's MAC addresses: unicast, locally administered, and above any a real
	// interface is likely to have, because a bridge whose address was not set takes the
	// lowest of its ports' and would change it while the probe's port is in.
	outerMAC := net.HardwareAddr{0xfe, 0xff, 0xff, 0xff, 0xff, 0xfd}
	innerMAC := net.HardwareAddr{0xfe, 0xff, 0xff, 0xff, 0xff, 0xfe}
	if err := nl.addVeth(probeOuter, probeInner, outerMAC, innerMAC); err != nil {
		return failed("%v (needs CAP_NET_ADMIN)", err)
	}
	defer func() {
		if err := nl.delLink(probeOuter); err != nil {
			r.log.Warn("mediarelay: the probe's veth pair is left behind; the next start removes it", "err", err)
		}
	}()
	outer, err := nl.linkByName(probeOuter)
	if err != nil {
		return failed("%v", err)
	}
	inner, err := nl.linkByName(probeInner)
	if err != nil {
		return failed("%v", err)
	}
	if err := nl.setUp(inner.index, br.index); err != nil {
		return failed("%v", err)
	}
	if err := nl.setUp(outer.index, 0); err != nil {
		return failed("%v", err)
	}
	pkt, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return failed("packet socket: %v (needs CAP_NET_RAW)", err)
	}
	defer unix.Close(pkt)
	token := make([]byte, 16)
	copy(token, "sipcar-probe")
	_, _ = rand.Read(token[12:])
	frame := probeFrame(br.mac, outer.mac, netip.AddrPortFrom(src, 9), netip.AddrPortFrom(dst, port), token)
	to := &unix.SockaddrLinklayer{Ifindex: outer.index, Halen: 6}
	copy(to.Addr[:], br.mac)

	fds := make([]unix.PollFd, 0, len(fanIn)+1)
	for _, fd := range fanIn {
		fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	}
	fds = append(fds, unix.PollFd{Fd: int32(plain), Events: unix.POLLIN})
	buf := make([]byte, 2048)
	var sendErr error
	for deadline := time.Now().Add(probeWait); time.Now().Before(deadline); {
		if err := unix.Sendto(pkt, frame, 0, to); err != nil {
			sendErr = err
		}
		for next := time.Now().Add(probeResend); time.Now().Before(next); {
			n, err := unix.Poll(fds, int(time.Until(next)/time.Millisecond)+1)
			if err != nil && !errors.Is(err, unix.EINTR) {
				return failed("poll: %v", err)
			}
			if n <= 0 {
				continue
			}
			for i, f := range fds {
				if f.Revents&unix.POLLIN == 0 {
					continue
				}
				// Drain the socket: what else arrives now (media of calls from before a
				// restart) has no stream yet and would be dropped anyway.
				for {
					k, _, err := unix.Recvfrom(int(f.Fd), buf, unix.MSG_DONTWAIT)
					if err != nil {
						break
					}
					if !bytes.Equal(buf[:k], token) {
						continue
					}
					if i < len(fanIn) {
						return probeOutcome{path: PathFanIn, reason: "probe-fanin",
							detail: fmt.Sprintf("fan-in: a probe sent through it to %v reached the fan-in socket", netip.AddrPortFrom(dst, port))}
					}
					return probeOutcome{path: PathPerPort, reason: "probe-bypassed",
						detail: fmt.Sprintf("a socket per relay port: a probe sent through it to %v bypassed the fan-in socket and reached the port's own (br_netfilter on this bridge)", netip.AddrPortFrom(dst, port))}
				}
			}
		}
	}
	if sendErr != nil {
		return failed("send: %v", sendErr)
	}
	return probeOutcome{path: PathPerPort, reason: "probe-lost",
		detail: fmt.Sprintf("a socket per relay port: a probe sent through it to %v reached no socket within %v (a firewall, or a port not forwarding yet)", netip.AddrPortFrom(dst, port), probeWait)}
}

// probeSource picks the probe's source address: one of the bridge's subnet, as a container's
// would be (so that reverse-path filtering accepts it), at the subnet's top, away from the
// addresses Docker hands out from the bottom.
func probeSource(nl *rtnl, br linkInfo, dst netip.Addr) (netip.Addr, error) {
	prefixes, err := nl.addrs(br.index)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, p := range prefixes {
		if p.Addr().Is4() != dst.Is4() || p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if p.Bits() >= p.Addr().BitLen()-1 {
			continue // no room for another host
		}
		b := p.Masked().Addr().AsSlice()
		for i := range b {
			host := max(0, min(8, p.Addr().BitLen()-p.Bits()-8*(len(b)-1-i)))
			b[i] |= byte(1<<host - 1)
		}
		top, _ := netip.AddrFromSlice(b)
		src := top.Prev() // below the IPv4 broadcast address
		if src == p.Addr() || src == dst {
			src = src.Prev()
		}
		return src, nil
	}
	return netip.Addr{}, fmt.Errorf("bridge %s has no %s subnet to send a probe from", br.name, map[bool]string{true: "IPv4", false: "IPv6"}[dst.Is4()])
}

// probeFrame builds an Ethernet frame carrying a UDP datagram from src to dst.
func probeFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	udp := make([]byte, sock.UDPHeaderLen+len(payload))
	copy(udp[sock.UDPHeaderLen:], payload)
	var srcA, dstA sock.Addr
	srcA.Set(src)
	dstA.Set(dst)
	sock.PutUDPHeader(udp, &srcA, &dstA) // with the checksum, which IPv6 requires
	var ip []byte
	etherType := uint16(unix.ETH_P_IP)
	if src.Addr().Is4() {
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		ip[8] = 64 // TTL
		ip[9] = unix.IPPROTO_UDP
		copy(ip[12:], src.Addr().AsSlice())
		copy(ip[16:], dst.Addr().AsSlice())
		binary.BigEndian.PutUint16(ip[10:], sock.Checksum(ip))
	} else {
		etherType = unix.ETH_P_IPV6
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
		ip[6] = unix.IPPROTO_UDP
		ip[7] = 64 // hop limit
		copy(ip[8:], src.Addr().AsSlice())
		copy(ip[24:], dst.Addr().AsSlice())
	}
	frame := make([]byte, 0, 14+len(ip)+len(udp))
	frame = append(frame, dstMAC...)
	frame = append(frame, srcMAC...)
	frame = binary.BigEndian.AppendUint16(frame, etherType)
	frame = append(frame, ip...)
	return append(frame, udp...)
}
