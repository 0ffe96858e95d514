package sock

import (
	"encoding/binary"
	"net/netip"
)

// UDPHeaderLen is the length of the UDP header [PutUDPHeader] writes.
const UDPHeaderLen = 8

// Addr is a UDP address encoded once for the kernel and for [PutUDPHeader]: on Linux the
// sockaddr a message header names ([Addr.Name]), everywhere the address and port bytes of a
// UDP header and its checksum. A packet path that keeps an Addr per destination never
// converts addresses. The zero Addr is no address. An Addr is a value: copy it freely.
type Addr struct {
	ip   [16]byte // the first 4 bytes when IPv4
	port [2]byte  // network order
	fam  uint8    // 0: no address, 4 or 6
	sys  sysName  // the platform's encoding (Linux: a sockaddr_in or sockaddr_in6)
}

// Set makes a the address ap, IPv4-mapped IPv6 addresses unmapped; an invalid ap makes it
// no address.
func (a *Addr) Set(ap netip.AddrPort) {
	*a = Addr{}
	if !ap.IsValid() {
		return
	}
	binary.BigEndian.PutUint16(a.port[:], ap.Port())
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		a.fam = 4
		a4 := ip.As4()
		copy(a.ip[:], a4[:])
	} else {
		a.fam = 6
		a.ip = ip.As16()
	}
	a.sys.set(a)
}

// IsValid reports whether a is an address (Set with a valid one).
func (a *Addr) IsValid() bool { return a.fam != 0 }

// Is4 reports whether a is an IPv4 address.
func (a *Addr) Is4() bool { return a.fam == 4 }

// AddrPort returns the address a holds.
func (a *Addr) AddrPort() netip.AddrPort {
	switch a.fam {
	case 4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a.ip[:4])), binary.BigEndian.Uint16(a.port[:]))
	case 6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.ip), binary.BigEndian.Uint16(a.port[:]))
	}
	return netip.AddrPort{}
}

// PutUDPHeader writes the UDP header of a datagram from src to dst into dgram[:UDPHeaderLen],
// in front of the payload dgram[UDPHeaderLen:], checksum included (a raw socket leaves it to
// its user). src and dst must be addresses of the same family, and dgram at least
// UDPHeaderLen and at most 65535 bytes long.
func PutUDPHeader(dgram []byte, src, dst *Addr) {
	udp := dgram[:UDPHeaderLen]
	copy(udp[0:2], src.port[:])
	copy(udp[2:4], dst.port[:])
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(dgram)))
	udp[6], udp[7] = 0, 0
	// The pseudo-header: addresses, protocol (17) and UDP length, then the datagram.
	var sum uint64
	if src.fam == 4 {
		sum = sumWords(src.ip[:4], 0)
		sum = sumWords(dst.ip[:4], sum)
	} else {
		sum = sumWords(src.ip[:], 0)
		sum = sumWords(dst.ip[:], sum)
	}
	sum += 17 + uint64(len(dgram))
	csum := ^fold(sumWords(dgram, sum))
	if csum == 0 {
		csum = 0xffff // 0 means "no checksum" in UDP over IPv4 and is invalid over IPv6
	}
	binary.BigEndian.PutUint16(udp[6:8], csum)
}

// Checksum returns the Internet checksum of b (RFC 1071): the one's complement of the one's
// complement sum of its 16-bit words, a trailing odd byte padded with zero. Over data that
// holds its own valid checksum (an IPv4 header) it is 0.
func Checksum(b []byte) uint16 { return ^fold(sumWords(b, 0)) }

// sumWords adds b as big-endian 16-bit words (a trailing odd byte padded with zero) to the
// one's complement accumulator sum, 32 bits at a time.
func sumWords(b []byte, sum uint64) uint64 {
	for len(b) >= 16 {
		sum += uint64(binary.BigEndian.Uint32(b[0:4])) + uint64(binary.BigEndian.Uint32(b[4:8])) +
			uint64(binary.BigEndian.Uint32(b[8:12])) + uint64(binary.BigEndian.Uint32(b[12:16]))
		b = b[16:]
	}
	for len(b) >= 4 {
		sum += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

// fold folds a one's complement accumulator to 16 bits.
func fold(sum uint64) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
