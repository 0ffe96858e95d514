package mediarelay

import "encoding/binary"

// Headroom left in front of every received payload, so that the raw send scheme writes the
// UDP header in place instead of copying the payload. The kernel writes the IP header (see
// openRaw for why the socket does not include it).
const (
	headroom  = udpHdrLen
	udpHdrLen = 8
)

// putUDPHeader writes the UDP header of a datagram from src to dst carrying the payload at
// slot[headroom:headroom+n], right in front of it, checksum included (raw sockets leave it to
// the sender), and returns the offset where the datagram starts. src and dst are of the same
// family.
func putUDPHeader(slot []byte, n int, src, dst *sockaddr) int {
	payload := slot[headroom : headroom+n]
	udpLen := udpHdrLen + n
	udp := slot[headroom-udpHdrLen : headroom]
	copy(udp[0:2], src.port[:])
	copy(udp[2:4], dst.port[:])
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpLen))
	udp[6], udp[7] = 0, 0
	var sum uint64
	if src.v4 {
		sum = sumWords(src.ip[:4], 0)
		sum = sumWords(dst.ip[:4], sum)
	} else {
		sum = sumWords(src.ip[:], 0)
		sum = sumWords(dst.ip[:], sum)
	}
	sum += 17 + uint64(udpLen)
	sum = sumWords(udp, sum)
	sum = sumWords(payload, sum)
	csum := ^fold(sum)
	if csum == 0 {
		csum = 0xffff // 0 means "no checksum" in UDP over IPv4 and is invalid over IPv6
	}
	binary.BigEndian.PutUint16(udp[6:8], csum)
	return headroom - udpHdrLen
}

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

func fold(sum uint64) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
