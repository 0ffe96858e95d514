package mediarelay

import "net/netip"

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// rtpPacket builds an RTP packet (version 2, payload type 0) of 172 bytes.
func rtpPacket(seq uint16, ts, ssrc uint32, marker byte) []byte {
	b := make([]byte, 172)
	b[0], b[1] = 0x80, 0
	b[2], b[3] = byte(seq>>8), byte(seq)
	b[4], b[5], b[6], b[7] = byte(ts>>24), byte(ts>>16), byte(ts>>8), byte(ts)
	b[8], b[9], b[10], b[11] = byte(ssrc>>24), byte(ssrc>>16), byte(ssrc>>8), byte(ssrc)
	b[12] = marker
	return b
}

// rtcpPacket builds an RTCP receiver report with no blocks.
func rtcpPacket(ssrc uint32, marker byte) []byte {
	return []byte{0x80, 201, 0, 2, byte(ssrc >> 24), byte(ssrc >> 16), byte(ssrc >> 8), byte(ssrc), marker, 0, 0, 0}
}
