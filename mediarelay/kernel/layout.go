package kernel

import (
	"encoding/binary"
	"net/netip"
)

// Key names the packets of one leg that the kernel forwards: UDP from the peer's latched source
// to the relay port it latched on. Its layout is the BPF hash map's key (40 bytes, no implicit
// padding, so that it is also usable as a Go map key); build it with [NewKey].
type Key struct {
	Dst     [16]byte // the relay's address; an IPv4 address in the first 4 bytes
	Src     [16]byte // the peer's address, likewise
	DstPort [2]byte  // network order
	SrcPort [2]byte  // network order
	Family  uint8    // 4 or 6
	_       [3]byte
}

// NewKey returns the key of packets from peer to the relay port relay. Both must be valid and
// of one family (IPv4-mapped addresses count as IPv4).
func NewKey(relay, peer netip.AddrPort) Key {
	var k Key
	k.Family = putAddr(&k.Dst, relay.Addr())
	putAddr(&k.Src, peer.Addr())
	binary.BigEndian.PutUint16(k.DstPort[:], relay.Port())
	binary.BigEndian.PutUint16(k.SrcPort[:], peer.Port())
	return k
}

// Relay returns the relay address and port of the key.
func (k Key) Relay() netip.AddrPort { return addrPort(k.Family, &k.Dst, k.DstPort) }

// Peer returns the peer's address and port.
func (k Key) Peer() netip.AddrPort { return addrPort(k.Family, &k.Src, k.SrcPort) }

// Rule says what the kernel does with the packets of a [Key]: rewrite their addresses and
// ports to From -> To and send them out of interface Ifindex, counting them in counter slot
// Slot. Its layout is the BPF hash map's value (56 bytes); build it with [NewRule].
type Rule struct {
	Src     [16]byte // the relay's address on the other leg: the new source
	Dst     [16]byte // the other leg's peer: the new destination
	SrcPort [2]byte  // network order
	DstPort [2]byte  // network order
	Flags   uint32   // FlagMux
	Ifindex uint32   // the interface the route to Dst leaves by
	Slot    uint32   // the counter slot (see [Forwarder.Counts])
	// CsumAddrs and CsumPorts are the changes of the one's complement sums of the addresses and
	// of the ports, folded to 16 bits in the host's byte order: what the checksum helpers add.
	CsumAddrs uint32
	CsumPorts uint32
}

// FlagMux marks a leg carrying RTCP on its RTP port (a=rtcp-mux): packets whose second byte is
// 200-207 (RTCP packet types; RFC 5761 section 4) are left to userspace.
const FlagMux = 1

// NewRule returns the rule that turns packets of k into packets from -> to, sent out of
// ifindex and counted in slot. from and to must be of k's family.
func NewRule(k Key, from, to netip.AddrPort, mux bool, ifindex int, slot uint32) Rule {
	r := Rule{Ifindex: uint32(ifindex), Slot: slot}
	putAddr(&r.Src, from.Addr())
	putAddr(&r.Dst, to.Addr())
	binary.BigEndian.PutUint16(r.SrcPort[:], from.Port())
	binary.BigEndian.PutUint16(r.DstPort[:], to.Port())
	if mux {
		r.Flags |= FlagMux
	}
	n := 16
	if k.Family == 4 {
		n = 4
	}
	r.CsumAddrs = uint32(fold(csumSub(csumSub(csumAdd(csumAdd(0, r.Src[:n]), r.Dst[:n]), k.Src[:n]), k.Dst[:n])))
	r.CsumPorts = uint32(fold(csumSub(csumSub(csumAdd(csumAdd(0, r.SrcPort[:]), r.DstPort[:]), k.SrcPort[:]), k.DstPort[:])))
	return r
}

// Endpoints returns the rule's new source and destination; k is the key it belongs to.
func (r Rule) Endpoints(k Key) (from, to netip.AddrPort) {
	return addrPort(k.Family, &r.Src, r.SrcPort), addrPort(k.Family, &r.Dst, r.DstPort)
}

// Counts is a counter slot as the program writes it (32 bytes): the packets the kernel
// forwarded, their UDP payload bytes (what userspace counts), and when the last one came
// (CLOCK_MONOTONIC nanoseconds, 0 before the first).
type Counts struct {
	Packets, Bytes, LastNs uint64
	_                      uint64
}

const (
	keySize    = 40
	ruleSize   = 56
	countsSize = 32
)

func putAddr(into *[16]byte, a netip.Addr) uint8 {
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		copy(into[:], b[:])
		return 4
	}
	*into = a.As16()
	return 6
}

func addrPort(family uint8, a *[16]byte, port [2]byte) netip.AddrPort {
	addr := netip.AddrFrom16(*a)
	if family == 4 {
		addr = netip.AddrFrom4([4]byte(a[:4]))
	}
	return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(port[:]))
}

// The checksum changes a rule carries are what the kernel's csum_replace_by_diff takes: the
// one's complement sum of the new bytes minus that of the old, over 16-bit words read in the
// host's byte order (as the kernel reads them), folded to 16 bits.

// csumAdd adds b's 16-bit words (b of even length) to sum.
func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.NativeEndian.Uint16(b[i:]))
	}
	return sum
}

// csumSub subtracts b's 16-bit words from sum: adds their one's complements.
func csumSub(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(^binary.NativeEndian.Uint16(b[i:]))
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
