// Package hep exports what sipcar sees to a HEP collector (Homer, Kamailio's sipcapture,
// heplify-server): every SIP message on both sides as it crossed the wire, RTCP reports and
// per-stream quality reports, encapsulated in HEPv3 (the HEP/EEP specification of the
// sipcapture project) over UDP or TCP.
//
// Export never slows or blocks relaying: [Exporter.Send] encodes into a buffer from a pool and
// queues it without waiting; a full queue drops the packet and counts it. One goroutine writes
// the queue to the collector in batches, looking at it every few milliseconds while packets
// flow rather than being woken by each one, and reconnects a TCP collector that went away.
package hep

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Protocol types of the HEP protocol-type chunk.
const (
	ProtoSIP    uint8 = 1   // a SIP message
	ProtoRTCP   uint8 = 5   // an RTCP report, as JSON
	ProtoReport uint8 = 34  // a stream's quality report, as JSON (what RTPAgent and rtpengine send)
	ProtoLog    uint8 = 100 // a log line, as JSON (sipcar's rewrite audit of a traced message)
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

// Decode reads one HEPv3 packet, as [Append] writes it: the packet, the capture agent ID and the
// auth key. Chunks of other vendors and types are skipped. It is what tests and tools read
// sipcar's HEP with; it never panics on input.
func Decode(b []byte) (p Packet, agentID uint32, authKey string, err error) {
	if len(b) < 6 || string(b[:4]) != "HEP3" {
		return p, 0, "", errors.New("hep: not a HEPv3 packet")
	}
	n := int(binary.BigEndian.Uint16(b[4:]))
	if n < 6 || n > len(b) {
		return p, 0, "", fmt.Errorf("hep: length %d, have %d bytes", n, len(b))
	}
	var src, dst netip.Addr
	var sport, dport uint16
	var secs, micros uint32
	for rest := b[6:n]; len(rest) > 0; {
		if len(rest) < chunkHeader {
			return p, 0, "", errors.New("hep: truncated chunk header")
		}
		vendor, typ, l := binary.BigEndian.Uint16(rest), binary.BigEndian.Uint16(rest[2:]), int(binary.BigEndian.Uint16(rest[4:]))
		if l < chunkHeader || l > len(rest) {
			return p, 0, "", fmt.Errorf("hep: chunk %d length %d", typ, l)
		}
		v := rest[chunkHeader:l]
		rest = rest[l:]
		if vendor != 0 {
			continue
		}
		fixed := func(size int) bool { return len(v) == size }
		switch {
		case typ == chunkIPProto && fixed(1):
			p.Transport = Transport(v[0])
		case typ == chunkSrc4 && fixed(4):
			src = netip.AddrFrom4([4]byte(v))
		case typ == chunkDst4 && fixed(4):
			dst = netip.AddrFrom4([4]byte(v))
		case typ == chunkSrc6 && fixed(16):
			src = netip.AddrFrom16([16]byte(v))
		case typ == chunkDst6 && fixed(16):
			dst = netip.AddrFrom16([16]byte(v))
		case typ == chunkSrcPort && fixed(2):
			sport = binary.BigEndian.Uint16(v)
		case typ == chunkDstPort && fixed(2):
			dport = binary.BigEndian.Uint16(v)
		case typ == chunkSeconds && fixed(4):
			secs = binary.BigEndian.Uint32(v)
		case typ == chunkMicros && fixed(4):
			micros = binary.BigEndian.Uint32(v)
		case typ == chunkProto && fixed(1):
			p.Proto = v[0]
		case typ == chunkAgentID && fixed(4):
			agentID = binary.BigEndian.Uint32(v)
		case typ == chunkAuthKey:
			authKey = string(v)
		case typ == chunkCorrelation:
			p.Correlation = string(v)
		case typ == chunkPayload:
			p.Payload = v
		}
	}
	p.Src, p.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	p.Time = time.Unix(int64(secs), int64(micros)*1000)
	return p, agentID, authKey, nil
}
