// Package hep exports what sipcar sees to a HEP collector (Homer, Kamailio's sipcapture,
// heplify-server): every SIP message on both sides as it crossed the wire, RTCP reports and
// per-stream quality reports, encapsulated in HEPv3 (the HEP/EEP specification of the
// sipcapture project) over UDP or TCP.
//
// Export never slows or blocks relaying: [Exporter.Send] encodes into a buffer from a pool and
// queues it without waiting; a full queue drops the packet and counts it. One goroutine writes
// the queue to the collector, reconnecting a TCP collector that went away.
package hep

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Protocol types of the HEP protocol-type chunk.
const (
	ProtoSIP    uint8 = 1  // a SIP message
	ProtoRTCP   uint8 = 5  // an RTCP report, as JSON
	ProtoReport uint8 = 34 // a stream's quality report, as JSON (what RTPAgent and rtpengine send)
)

// Transport names the transport a captured packet travelled over, for the IP protocol chunk.
type Transport uint8

// Transports of captured packets (IP protocol numbers).
const (
	UDP Transport = 17
	TCP Transport = 6
)

// Packet is one captured packet and what HEP says of it.
type Packet struct {
	Src, Dst  netip.AddrPort
	Transport Transport
	Time      time.Time
	Proto     uint8
	// Correlation ties packets that belong together: the SIP messages of a call, the two versions
	// of one message (as received and as sent), a call's RTCP and quality reports.
	Correlation string
	Payload     []byte
}

// Chunk types of the generic vendor (0).
const (
	chunkFamily      = 1
	chunkIPProto     = 2
	chunkSrc4        = 3
	chunkDst4        = 4
	chunkSrc6        = 5
	chunkDst6        = 6
	chunkSrcPort     = 7
	chunkDstPort     = 8
	chunkSeconds     = 9
	chunkMicros      = 10
	chunkProto       = 11
	chunkAgentID     = 12
	chunkAuthKey     = 14
	chunkPayload     = 15
	chunkCorrelation = 17
)

// chunkHeader is a chunk's vendor, type and length: 6 bytes.
const chunkHeader = 6

// Append appends p encoded as one HEPv3 packet to dst and returns the result, or dst unchanged
// when p does not fit in one (a HEP packet's length is 16 bits). agentID and authKey identify
// sipcar to the collector (authKey may be empty).
func Append(dst []byte, p *Packet, agentID uint32, authKey string) []byte {
	start := len(dst)
	dst = append(dst, "HEP3\x00\x00"...)
	fam, src, dstIP := uint8(2), p.Src.Addr().Unmap(), p.Dst.Addr().Unmap()
	if src.Is6() || dstIP.Is6() {
		fam = 10
		src, dstIP = netip.AddrFrom16(p.Src.Addr().As16()), netip.AddrFrom16(p.Dst.Addr().As16())
	}
	dst = appendUint8(dst, chunkFamily, fam)
	dst = appendUint8(dst, chunkIPProto, uint8(p.Transport))
	if fam == 2 {
		s, d := src.As4(), dstIP.As4()
		dst = appendChunk(dst, chunkSrc4, s[:])
		dst = appendChunk(dst, chunkDst4, d[:])
	} else {
		s, d := src.As16(), dstIP.As16()
		dst = appendChunk(dst, chunkSrc6, s[:])
		dst = appendChunk(dst, chunkDst6, d[:])
	}
	dst = appendUint16(dst, chunkSrcPort, p.Src.Port())
	dst = appendUint16(dst, chunkDstPort, p.Dst.Port())
	dst = appendUint32(dst, chunkSeconds, uint32(p.Time.Unix()))
	dst = appendUint32(dst, chunkMicros, uint32(p.Time.Nanosecond()/1000))
	dst = appendUint8(dst, chunkProto, p.Proto)
	dst = appendUint32(dst, chunkAgentID, agentID)
	if authKey != "" {
		dst = appendString(dst, chunkAuthKey, authKey)
	}
	if p.Correlation != "" {
		dst = appendString(dst, chunkCorrelation, p.Correlation)
	}
	dst = appendChunk(dst, chunkPayload, p.Payload)
	n := len(dst) - start
	if n > 0xffff {
		return dst[:start]
	}
	binary.BigEndian.PutUint16(dst[start+4:], uint16(n))
	return dst
}

func appendHeader(dst []byte, typ uint16, n int) []byte {
	dst = binary.BigEndian.AppendUint16(dst, 0) // the generic vendor
	dst = binary.BigEndian.AppendUint16(dst, typ)
	return binary.BigEndian.AppendUint16(dst, uint16(min(chunkHeader+n, 0xffff)))
}

func appendChunk(dst []byte, typ uint16, data []byte) []byte {
	return append(appendHeader(dst, typ, len(data)), data...)
}

func appendString(dst []byte, typ uint16, s string) []byte {
	return append(appendHeader(dst, typ, len(s)), s...)
}

func appendUint8(dst []byte, typ uint16, v uint8) []byte {
	return append(appendHeader(dst, typ, 1), v)
}

func appendUint16(dst []byte, typ uint16, v uint16) []byte {
	return binary.BigEndian.AppendUint16(appendHeader(dst, typ, 2), v)
}

func appendUint32(dst []byte, typ uint16, v uint32) []byte {
	return binary.BigEndian.AppendUint32(appendHeader(dst, typ, 4), v)
}
