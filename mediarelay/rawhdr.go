package mediarelay

import "encoding/binary"

// Headroom left in front of every received payload, so that the raw send scheme writes IP and
// UDP headers in place instead of copying the payload.
const (
	headroom   = ipv6HdrLen + udpHdrLen
	ipv4HdrLen = 20
	ipv6HdrLen = 40
	udpHdrLen  = 8
	hopLimit   = 64
)

// putHeaders writes the IP and UDP headers of a packet from src to dst carrying the payload at
// slot[headroom:headroom+n], right in front of it, and returns the offset where the packet
// starts. src and dst are of the same family. The IPv4 header checksum and ID are left to the
// kernel, which fills them for IP_HDRINCL sockets.
func putHeaders(slot []byte, n int, src, dst *sockaddr) int {
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

	if src.v4 {
		start := headroom - udpHdrLen - ipv4HdrLen
		ip := slot[start : headroom-udpHdrLen]
		ip[0], ip[1] = 0x45, 0
		binary.BigEndian.PutUint16(ip[2:4], uint16(ipv4HdrLen+udpLen))
		ip[4], ip[5] = 0, 0
		ip[6], ip[7] = 0x40, 0 // don't fragment
		ip[8], ip[9] = hopLimit, 17
		ip[10], ip[11] = 0, 0
		copy(ip[12:16], src.ip[:4])
		copy(ip[16:20], dst.ip[:4])
		return start
	}
	start := headroom - udpHdrLen - ipv6HdrLen
	ip := slot[start : headroom-udpHdrLen]
	ip[0], ip[1], ip[2], ip[3] = 0x60, 0, 0, 0
	binary.BigEndian.PutUint16(ip[4:6], uint16(udpLen))
	ip[6], ip[7] = 17, hopLimit
	copy(ip[8:24], src.ip[:])
	copy(ip[24:40], dst.ip[:])
	return start
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
