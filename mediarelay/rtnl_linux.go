package mediarelay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rtnl is a minimal rtnetlink client for what the start-up probe needs: the interface a route
// leaves by, a link's kind, address and addresses, and a temporary veth pair on a bridge. It
// speaks to the kernel of the namespace the socket was opened in. Not safe for concurrent use.
type rtnl struct {
	fd  int
	seq uint32
}

// Constants of linux/if_link.h and linux/veth.h that x/sys/unix lacks.
const (
	in6AddrGenModeNone = 1 // IN6_ADDR_GEN_MODE_NONE
	vethInfoPeer       = 1 // VETH_INFO_PEER
)

func openRtnl() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("rtnetlink bind: %w", err)
	}
	// A dump or an answer that never comes must not hang start-up.
	tv := unix.Timeval{Sec: 2}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &rtnl{fd: fd}, nil
}

func (n *rtnl) close() { unix.Close(n.fd) }

// nlAttr is one netlink attribute to write; nested attributes go in nested (then data is
// ignored).
type nlAttr struct {
	typ    uint16
	data   []byte
	nested []nlAttr
}

func nlAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }

func appendAttrs(b []byte, attrs []nlAttr) []byte {
	for _, a := range attrs {
		start := len(b)
		b = append(b, 0, 0, 0, 0)
		typ := a.typ
		if a.nested != nil {
			typ |= unix.NLA_F_NESTED
			b = appendAttrs(b, a.nested)
		} else {
			b = append(b, a.data...)
		}
		binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
		binary.NativeEndian.PutUint16(b[start+2:], typ)
		for len(b) < nlAlign(len(b)) {
			b = append(b, 0)
		}
	}
	return b
}

// parseAttrs splits a block of attributes (nested ones included) by type.
func parseAttrs(b []byte) map[uint16][]byte {
	m := make(map[uint16][]byte)
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		m[typ] = b[unix.SizeofRtAttr:l]
		b = b[min(nlAlign(l), len(b)):]
	}
	return m
}

// do sends one request (header fields filled in here) and returns the payloads of the
// answers of type want, until the kernel's acknowledgement or the end of a dump. An error
// answer becomes the error.
func (n *rtnl) do(typ uint16, flags uint16, body []byte, want uint16) ([][]byte, error) {
	n.seq++
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	msg = append(msg, body...)
	h := (*unix.NlMsghdr)(unsafe.Pointer(&msg[0]))
	h.Len = uint32(len(msg))
	h.Type = typ
	h.Flags = flags | unix.NLM_F_REQUEST | unix.NLM_F_ACK
	h.Seq = n.seq
	if err := unix.Sendto(n.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("rtnetlink send: %w", err)
	}
	var out [][]byte
	buf := make([]byte, 64<<10)
	for {
		k, _, err := unix.Recvfrom(n.fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("rtnetlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:k])
		if err != nil {
			return nil, fmt.Errorf("rtnetlink parse: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != n.seq {
				continue // a late answer to an earlier request
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, errors.New("rtnetlink: short error message")
				}
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
					return nil, unix.Errno(-code)
				}
				return out, nil // the acknowledgement
			case want:
				out = append(out, append([]byte(nil), m.Data...))
			}
		}
	}
}

// routeOIF returns the index of the interface the kernel's route to dst leaves by.
func (n *rtnl) routeOIF(dst netip.Addr) (int, error) {
	rt := make([]byte, unix.SizeofRtMsg)
	fam := unix.AF_INET6
	if dst.Is4() {
		fam = unix.AF_INET
	}
	rt[0] = byte(fam)
	rt[1] = byte(dst.BitLen()) // rtm_dst_len
	body := appendAttrs(rt, []nlAttr{{typ: unix.RTA_DST, data: dst.AsSlice()}})
	answers, err := n.do(unix.RTM_GETROUTE, 0, body, unix.RTM_NEWROUTE)
	if err != nil {
		return 0, fmt.Errorf("route to %v: %w", dst, err)
	}
	for _, a := range answers {
		if len(a) < unix.SizeofRtMsg {
			continue
		}
		// rtm_type: an unreachable route (IPv6 answers one with the loopback interface where
		// there is no route) or a local one is no way media comes in.
		if typ := a[7]; typ != unix.RTN_UNICAST {
			return 0, fmt.Errorf("route to %v: none (route type %d)", dst, typ)
		}
		if oif, ok := parseAttrs(a[unix.SizeofRtMsg:])[unix.RTA_OIF]; ok && len(oif) == 4 {
			return int(binary.NativeEndian.Uint32(oif)), nil
		}
	}
	return 0, fmt.Errorf("route to %v: no outgoing interface", dst)
}

// defaultRouteOIFs returns the interfaces the main table's default route of a family leaves
// by (every next hop of a multipath route). A lookup of the unspecified address would not
// find it: the kernel answers that one locally.
func (n *rtnl) defaultRouteOIFs(v4 bool) ([]int, error) {
	rt := make([]byte, unix.SizeofRtMsg)
	rt[0] = unix.AF_INET6
	if v4 {
		rt[0] = unix.AF_INET
	}
	answers, err := n.do(unix.RTM_GETROUTE, unix.NLM_F_DUMP, rt, unix.RTM_NEWROUTE)
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	var out []int
	for _, a := range answers {
		// rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
		if len(a) < unix.SizeofRtMsg || a[1] != 0 || a[7] != unix.RTN_UNICAST {
			continue
		}
		at := parseAttrs(a[unix.SizeofRtMsg:])
		table := uint32(a[4])
		if t, ok := at[unix.RTA_TABLE]; ok && len(t) == 4 {
			table = binary.NativeEndian.Uint32(t)
		}
		if table != unix.RT_TABLE_MAIN {
			continue
		}
		if oif, ok := at[unix.RTA_OIF]; ok && len(oif) == 4 {
			out = append(out, int(binary.NativeEndian.Uint32(oif)))
		}
		// struct rtnexthop: len (2), flags, hops, ifindex (4), then its attributes.
		for mp := at[unix.RTA_MULTIPATH]; len(mp) >= 8; {
			l := int(binary.NativeEndian.Uint16(mp))
			out = append(out, int(int32(binary.NativeEndian.Uint32(mp[4:]))))
			if l < 8 || l > len(mp) {
				break
			}
			mp = mp[nlAlign(l):]
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no default route")
	}
	return out, nil
}

// linkInfo is what the probe needs to know of an interface.
type linkInfo struct {
	index int
	name  string
	kind  string // "bridge", "veth"...; "" for a device without rtnetlink ops (most NICs)
	mac   net.HardwareAddr
}

func ifinfo(index int, flags, change uint32) []byte {
	b := make([]byte, unix.SizeofIfInfomsg)
	ifi := (*unix.IfInfomsg)(unsafe.Pointer(&b[0]))
	ifi.Family = unix.AF_UNSPEC
	ifi.Index = int32(index)
	ifi.Flags = flags
	ifi.Change = change
	return b
}

func (n *rtnl) link(index int) (linkInfo, error) {
	answers, err := n.do(unix.RTM_GETLINK, 0, ifinfo(index, 0, 0), unix.RTM_NEWLINK)
	if err != nil || len(answers) == 0 || len(answers[0]) < unix.SizeofIfInfomsg {
		return linkInfo{}, fmt.Errorf("link %d: %v", index, err)
	}
	a := parseAttrs(answers[0][unix.SizeofIfInfomsg:])
	l := linkInfo{index: index, name: cString(a[unix.IFLA_IFNAME]), mac: net.HardwareAddr(a[unix.IFLA_ADDRESS])}
	if info, ok := a[unix.IFLA_LINKINFO]; ok {
		l.kind = cString(parseAttrs(info)[unix.IFLA_INFO_KIND])
	}
	return l, nil
}

func (n *rtnl) linkByName(name string) (linkInfo, error) {
	i, err := net.InterfaceByName(name)
	if err != nil {
		return linkInfo{}, err
	}
	return n.link(i.Index)
}

// addrs returns the addresses (with their prefix lengths) of the interface index, or of every
// interface when index is 0.
func (n *rtnl) addrs(index int) ([]netip.Prefix, error) {
	b := make([]byte, unix.SizeofIfAddrmsg)
	answers, err := n.do(unix.RTM_GETADDR, unix.NLM_F_DUMP, b, unix.RTM_NEWADDR)
	if err != nil {
		return nil, fmt.Errorf("addresses: %w", err)
	}
	var out []netip.Prefix
	for _, a := range answers {
		if len(a) < unix.SizeofIfAddrmsg {
			continue
		}
		ifa := (*unix.IfAddrmsg)(unsafe.Pointer(&a[0]))
		if index != 0 && int(ifa.Index) != index {
			continue
		}
		at := parseAttrs(a[unix.SizeofIfAddrmsg:])
		raw, ok := at[unix.IFA_LOCAL]
		if !ok {
			raw = at[unix.IFA_ADDRESS]
		}
		if ip, ok := netip.AddrFromSlice(raw); ok {
			out = append(out, netip.PrefixFrom(ip, int(ifa.Prefixlen)))
		}
	}
	return out, nil
}

// addrIndex returns the index of the interface that holds the local address ip, or 0.
func (n *rtnl) addrIndex(ip netip.Addr) int {
	b := make([]byte, unix.SizeofIfAddrmsg)
	answers, err := n.do(unix.RTM_GETADDR, unix.NLM_F_DUMP, b, unix.RTM_NEWADDR)
	if err != nil {
		return 0
	}
	for _, a := range answers {
		if len(a) < unix.SizeofIfAddrmsg {
			continue
		}
		at := parseAttrs(a[unix.SizeofIfAddrmsg:])
		raw, ok := at[unix.IFA_LOCAL]
		if !ok {
			raw = at[unix.IFA_ADDRESS]
		}
		if got, ok := netip.AddrFromSlice(raw); ok && got.Unmap() == ip.Unmap() {
			return int((*unix.IfAddrmsg)(unsafe.Pointer(&a[0])).Index)
		}
	}
	return 0
}

// addVeth creates the veth pair a <-> b with the MAC addresses macA and macB.
func (n *rtnl) addVeth(a, b string, macA, macB net.HardwareAddr) error {
	peer := appendAttrs(ifinfo(0, 0, 0), []nlAttr{{typ: unix.IFLA_IFNAME, data: cBytes(b)}, {typ: unix.IFLA_ADDRESS, data: macB}})
	body := appendAttrs(ifinfo(0, 0, 0), []nlAttr{
		{typ: unix.IFLA_IFNAME, data: cBytes(a)}, {typ: unix.IFLA_ADDRESS, data: macA},
		{typ: unix.IFLA_LINKINFO, nested: []nlAttr{
			{typ: unix.IFLA_INFO_KIND, data: []byte("veth")},
			{typ: unix.IFLA_INFO_DATA, nested: []nlAttr{{typ: vethInfoPeer, data: peer}}},
		}},
	})
	if _, err := n.do(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body, 0); err != nil {
		return fmt.Errorf("add veth %s/%s: %w", a, b, err)
	}
	return nil
}

// setUp brings the interface index up, enslaved to master when master is not 0. It first
// turns off IPv6 link-local addresses on it, so that it sends no neighbour discovery or router
// solicitation while it lives (the kernel takes that setting only from an existing interface;
// where IPv6 is off there is nothing to turn off).
func (n *rtnl) setUp(index, master int) error {
	noLinkLocal := appendAttrs(ifinfo(index, 0, 0), []nlAttr{{typ: unix.IFLA_AF_SPEC, nested: []nlAttr{{typ: unix.AF_INET6, nested: []nlAttr{
		{typ: unix.IFLA_INET6_ADDR_GEN_MODE, data: []byte{in6AddrGenModeNone}},
	}}}}})
	_, _ = n.do(unix.RTM_NEWLINK, 0, noLinkLocal, 0)
	var attrs []nlAttr
	if master != 0 {
		attrs = append(attrs, nlAttr{typ: unix.IFLA_MASTER, data: binary.NativeEndian.AppendUint32(nil, uint32(master))})
	}
	body := appendAttrs(ifinfo(index, unix.IFF_UP, unix.IFF_UP), attrs)
	if _, err := n.do(unix.RTM_NEWLINK, 0, body, 0); err != nil {
		return fmt.Errorf("set link %d up: %w", index, err)
	}
	return nil
}

// delLink deletes the interface name (a veth pair goes with either end); it is not an error
// if there is none.
func (n *rtnl) delLink(name string) error {
	body := appendAttrs(ifinfo(0, 0, 0), []nlAttr{{typ: unix.IFLA_IFNAME, data: cBytes(name)}})
	if _, err := n.do(unix.RTM_DELLINK, 0, body, 0); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

func cBytes(s string) []byte { return append([]byte(s), 0) }

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
