package main

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/pion/rtp"
)

// The generator's packets are RTP as pion/rtp reads them, with the generator's marks after the
// header; building one allocates nothing (it runs for every packet sent).
func TestBuildPacket(t *testing.T) {
	g := &generator{o: options{size: 172}, runID: 7}
	st := newStream(netip.MustParseAddrPort("198.18.0.10:40000"), netip.MustParseAddrPort("198.51.100.1:20000"), netip.AddrPort{})
	s := &st
	var slot [slotBytes]byte
	start := g.build(slot[:], s, 41, 1234, 99)
	p := slot[headroom : headroom+g.o.size]
	var h rtp.Header
	if _, err := h.Unmarshal(p); err != nil {
		t.Fatal(err)
	}
	if h.Version != 2 || h.PayloadType != 0 || h.SequenceNumber != 1234 || h.Timestamp != 1234*160 || h.SSRC != 42 {
		t.Errorf("RTP header %+v", h)
	}
	if binary.BigEndian.Uint32(p[offMagic:]) != magic || binary.BigEndian.Uint32(p[offRun:]) != 7 ||
		binary.BigEndian.Uint32(p[offStream:]) != 41 || binary.BigEndian.Uint64(p[offSendTime:]) != 99 {
		t.Errorf("marks after the header are wrong: % x", p[:minPacket])
	}
	if start != 0 || binary.BigEndian.Uint16(slot[4:]) != uint16(8+g.o.size) {
		t.Errorf("UDP header at %d, length %d", start, binary.BigEndian.Uint16(slot[4:]))
	}
	if n := testing.AllocsPerRun(100, func() { g.build(slot[:], s, 41, 1235, 100) }); n != 0 {
		t.Errorf("building a packet allocates %v times", n)
	}
}
