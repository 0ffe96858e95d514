package integration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
)

// A minimal reader and writer of classic pcap files (not pcapng): the tests write the RTP that
// sipp plays and read what tcpdump captured on sipcar's interfaces.

const (
	pcapMagic       = 0xa1b2c3d4 // microsecond timestamps
	pcapMagicNanos  = 0xa1b23c4d
	linkEthernet    = 1
	linkLinuxCooked = 113
)

// writeRTPPcap writes n RTP packets of 20 ms of PCMA silence each (Ethernet, IPv4, UDP), 20 ms
// apart: what sipp's play_pcap_audio sends (it keeps the payload and the timing and takes the
// addresses from the call).
func writeRTPPcap(path string, n int) error {
	var buf bytes.Buffer
	le := binary.LittleEndian
	hdr := make([]byte, 24)
	le.PutUint32(hdr[0:], pcapMagic)
	le.PutUint16(hdr[4:], 2)
	le.PutUint16(hdr[6:], 4)
	le.PutUint32(hdr[16:], 65535)
	le.PutUint32(hdr[20:], linkEthernet)
	buf.Write(hdr)
	for i := range n {
		rtp := make([]byte, 12+160)
		rtp[0] = 0x80
		rtp[1] = 8 // PCMA
		binary.BigEndian.PutUint16(rtp[2:], uint16(i+1))
		binary.BigEndian.PutUint32(rtp[4:], uint32(i*160))
		binary.BigEndian.PutUint32(rtp[8:], 0x5ca1ab1e)
		for j := 12; j < len(rtp); j++ {
			rtp[j] = 0xd5 // A-law silence
		}
		frame := ethernetIPv4UDP(phoneAddr, publicAddr, 6000, 6000, rtp)
		rec := make([]byte, 16)
		usec := uint32(i) * 20000
		le.PutUint32(rec[0:], 1_700_000_000+usec/1_000_000)
		le.PutUint32(rec[4:], usec%1_000_000)
		le.PutUint32(rec[8:], uint32(len(frame)))
		le.PutUint32(rec[12:], uint32(len(frame)))
		buf.Write(rec)
		buf.Write(frame)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// ethernetIPv4UDP frames a UDP payload. The addresses only fill the headers: sipp replaces them.
func ethernetIPv4UDP(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	be := binary.BigEndian
	b := make([]byte, 14+20+8+len(payload))
	copy(b[0:6], []byte{2, 0, 0, 0, 0, 2})
	copy(b[6:12], []byte{2, 0, 0, 0, 0, 1})
	be.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	be.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = 17
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(be.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	be.PutUint16(ip[10:], ^uint16(sum))
	udp := b[34:42]
	be.PutUint16(udp[0:], sport)
	be.PutUint16(udp[2:], dport)
	be.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(b[42:], payload)
	return b
}

// packet is one captured IP packet carrying UDP or TCP.
type packet struct {
	src, dst netip.AddrPort
	proto    string // "udp" or "tcp"
	payload  []byte
}

// readPcap reads the UDP and TCP packets of a capture (IPv4 and IPv6, Ethernet or Linux
// cooked framing); other frames are skipped.
func readPcap(path string) ([]packet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 24 {
		return nil, fmt.Errorf("%s: %w", path, io.ErrUnexpectedEOF)
	}
	var bo binary.ByteOrder = binary.LittleEndian
	switch magic := binary.LittleEndian.Uint32(b); magic {
	case pcapMagic, pcapMagicNanos:
	default:
		bo = binary.BigEndian
		if m := bo.Uint32(b); m != pcapMagic && m != pcapMagicNanos {
			return nil, fmt.Errorf("%s: not a pcap file (magic %#x)", path, magic)
		}
	}
	link := bo.Uint32(b[20:])
	if link != linkEthernet && link != linkLinuxCooked {
		return nil, fmt.Errorf("%s: link type %d not supported", path, link)
	}
	var pkts []packet
	for off := 24; off+16 <= len(b); {
		caplen := int(bo.Uint32(b[off+8:]))
		off += 16
		if off+caplen > len(b) {
			break // a capture cut short by a stop
		}
		frame := b[off : off+caplen]
		off += caplen
		var etherType uint16
		switch link {
		case linkEthernet:
			if len(frame) < 14 {
				continue
			}
			etherType, frame = binary.BigEndian.Uint16(frame[12:]), frame[14:]
			if etherType == 0x8100 && len(frame) >= 4 { // VLAN tag
				etherType, frame = binary.BigEndian.Uint16(frame[2:]), frame[4:]
			}
		case linkLinuxCooked:
			if len(frame) < 16 {
				continue
			}
			etherType, frame = binary.BigEndian.Uint16(frame[14:]), frame[16:]
		}
		if p, err := parseIP(etherType, frame); err == nil {
			pkts = append(pkts, p)
		}
	}
	return pkts, nil
}

var errNotTransport = errors.New("not UDP or TCP over IP")

func parseIP(etherType uint16, b []byte) (packet, error) {
	var p packet
	var src, dst netip.Addr
	var proto byte
	switch etherType {
	case 0x0800:
		if len(b) < 20 || b[0]>>4 != 4 {
			return p, errNotTransport
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		if ihl < 20 || total > len(b) || total < ihl {
			return p, errNotTransport
		}
		if binary.BigEndian.Uint16(b[6:])&0x1fff != 0 {
			return p, errNotTransport // a later fragment
		}
		src, dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		proto, b = b[9], b[ihl:total]
	case 0x86dd:
		if len(b) < 40 {
			return p, errNotTransport
		}
		plen := int(binary.BigEndian.Uint16(b[4:]))
		if 40+plen > len(b) {
			return p, errNotTransport
		}
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		proto, b = b[6], b[40:40+plen] // no extension headers in these tests
	default:
		return p, errNotTransport
	}
	switch proto {
	case 17:
		if len(b) < 8 {
			return p, errNotTransport
		}
		p.proto, p.payload = "udp", b[8:]
	case 6:
		if len(b) < 20 || int(b[12]>>4)*4 > len(b) {
			return p, errNotTransport
		}
		p.proto, p.payload = "tcp", b[int(b[12]>>4)*4:]
	default:
		return p, errNotTransport
	}
	p.src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:]))
	p.dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:]))
	return p, nil
}
