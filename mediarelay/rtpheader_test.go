package mediarelay

import (
	"encoding/binary"
	"testing"

	"github.com/pion/rtp"
)

// The per-packet path reads the three fields its counters need (sequence number, timestamp,
// SSRC) from the bytes; pion/rtp's Header.Unmarshal reads the whole header, CSRCs and extensions
// included. These benchmarks show what that costs per packet, and the test that both agree.

func rtpSample() []byte {
	h := rtp.Header{Version: 2, PayloadType: 0, SequenceNumber: 4242, Timestamp: 160 * 4242, SSRC: 0xcafe}
	b, _ := h.Marshal()
	return append(b, make([]byte, 160)...)
}

func TestRTPFieldsByHandMatchPion(t *testing.T) {
	p := rtpSample()
	var h rtp.Header
	if _, err := h.Unmarshal(p); err != nil {
		t.Fatal(err)
	}
	seq, ts, ssrc := binary.BigEndian.Uint16(p[2:4]), binary.BigEndian.Uint32(p[4:8]), binary.BigEndian.Uint32(p[8:12])
	if seq != h.SequenceNumber || ts != h.Timestamp || ssrc != h.SSRC || p[0]>>6 != h.Version {
		t.Errorf("by hand %d %d %x, pion %d %d %x", seq, ts, ssrc, h.SequenceNumber, h.Timestamp, h.SSRC)
	}
}

var sink uint32

func BenchmarkRTPFieldsByHand(b *testing.B) {
	p := rtpSample()
	b.ReportAllocs()
	for range b.N {
		if p[0]>>6 == 2 {
			sink += uint32(binary.BigEndian.Uint16(p[2:4])) + binary.BigEndian.Uint32(p[4:8]) + binary.BigEndian.Uint32(p[8:12])
		}
	}
}

func BenchmarkRTPFieldsPion(b *testing.B) {
	p := rtpSample()
	var h rtp.Header
	b.ReportAllocs()
	for range b.N {
		if _, err := h.Unmarshal(p); err == nil {
			sink += uint32(h.SequenceNumber) + h.Timestamp + h.SSRC
		}
	}
}
