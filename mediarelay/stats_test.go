package mediarelay

import (
	"encoding/binary"
	"slices"
	"testing"
	"time"
)

// pcmu is the clock entry of payload type 0 (8000 Hz, timed).
const pcmu = 8000

// feed records RTP packets with the given sequence numbers, one every 20 ms of an 8 kHz
// clock, each sent and arriving in step (no jitter).
func feed(s *rxStats, ssrc uint32, seqs ...uint16) {
	for i, q := range seqs {
		s.rtpPacket(172, 0, q, uint32(160*int(q)), ssrc, pcmu, uint32(160*i), int64(i+1))
	}
}

func TestSequenceLoss(t *testing.T) {
	tests := []struct {
		name                 string
		seqs                 []uint16
		packets, expected    uint64
		lost                 int64
		duplicates, reorders uint64
	}{
		{"in order", []uint16{1, 2, 3, 4}, 4, 4, 0, 0, 0},
		{"gap", []uint16{1, 2, 5, 6}, 4, 6, 2, 0, 0},
		{"wrap", []uint16{65534, 65535, 0, 2}, 4, 5, 1, 0, 0},
		{"wrap, late across it", []uint16{65534, 0, 65535, 1}, 4, 4, 0, 0, 1},
		{"reordered", []uint16{1, 3, 2, 4}, 4, 4, 0, 0, 1},
		{"late beyond a gap", []uint16{1, 5, 2, 6}, 4, 6, 2, 0, 1},
		{"duplicate of the highest", []uint16{1, 2, 2, 3}, 4, 3, 0, 1, 0},
		{"duplicate of a late one", []uint16{1, 3, 2, 2, 4}, 5, 4, 0, 1, 1},
		{"duplicate of an old one", []uint16{1, 2, 3, 4, 2}, 5, 4, 0, 1, 0},
		{"late from before the first", []uint16{10, 11, 9, 12}, 4, 4, 0, 0, 1},
		{"restart after a jump, confirmed by the next packet", []uint16{1, 2, 40000, 40001, 40003}, 5, 5, 1, 0, 0},
		{"one wild packet is ignored", []uint16{1, 2, 40000, 3, 4}, 5, 4, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s rxStats
			feed(&s, 7, tt.seqs...)
			var ls LegStats
			s.snapshot(&ls, false, newPayloadTable(nil, 8000))
			r := ls.RTP
			if r.Packets != tt.packets || r.Expected != tt.expected || r.Lost != tt.lost || r.Duplicates != tt.duplicates || r.OutOfOrder != tt.reorders {
				t.Errorf("packets %d expected %d lost %d duplicates %d out of order %d, want %d %d %d %d %d",
					r.Packets, r.Expected, r.Lost, r.Duplicates, r.OutOfOrder, tt.packets, tt.expected, tt.lost, tt.duplicates, tt.reorders)
			}
		})
	}
}

func TestSequenceLongRun(t *testing.T) {
	// 200000 packets across three wraps: every 10th lost, every 50th sent twice, every
	// 100th pair swapped.
	var s rxStats
	var sent []uint16
	for i := range 200000 {
		if i%10 == 3 {
			continue
		}
		sent = append(sent, uint16(i))
		if i%50 == 7 {
			sent = append(sent, uint16(i))
		}
	}
	for i := 0; i+1 < len(sent); i += 100 {
		sent[i], sent[i+1] = sent[i+1], sent[i]
	}
	feed(&s, 9, sent...)
	var ls LegStats
	s.snapshot(&ls, false, nil)
	r := ls.RTP
	// The first and last packets sent are not lost: all of 0..199999 is expected.
	if r.Expected != 200000 || r.Lost != 20000 || r.Duplicates != 4000 {
		t.Errorf("expected %d lost %d duplicates %d, want 200000 20000 4000", r.Expected, r.Lost, r.Duplicates)
	}
	if r.OutOfOrder < 1700 || r.OutOfOrder > 1810 {
		t.Errorf("out of order %d, want one per swapped pair that is not a duplicate (about 1800)", r.OutOfOrder)
	}
}

func TestSSRCChangeAddsUp(t *testing.T) {
	var s rxStats
	s.rtpPacket(172, 0, 10, 0, 1, pcmu, 0, 1)
	s.rtpPacket(172, 0, 20, 160, 1, pcmu, 160, 2)  // 9 lost
	s.rtpPacket(172, 0, 500, 0, 2, pcmu, 320, 3)   // a new source
	s.rtpPacket(172, 0, 502, 320, 2, pcmu, 480, 4) // 1 lost
	var ls LegStats
	s.snapshot(&ls, false, nil)
	if ls.RTP.SSRC != 2 || ls.RTP.Lost != 10 || ls.RTP.Expected != 14 || ls.RTP.Packets != 4 {
		t.Errorf("SSRC %d lost %d expected %d packets %d, want 2, 10 (9 of the first source, 1 of the second), 14, 4",
			ls.RTP.SSRC, ls.RTP.Lost, ls.RTP.Expected, ls.RTP.Packets)
	}
}

func TestJitter(t *testing.T) {
	jitter := func(s *rxStats) time.Duration {
		var ls LegStats
		s.snapshot(&ls, false, nil)
		return ls.RTP.Jitter
	}
	var s rxStats
	for i := range 50 {
		s.rtpPacket(172, 0, uint16(i), uint32(160*i), 1, pcmu, uint32(160*i)+777, int64(i))
	}
	if j := jitter(&s); j != 0 {
		t.Errorf("jitter %v with a constant transit time, want 0", j)
	}

	s = rxStats{}
	for i := range 400 {
		arrival := uint32(160 * i)
		if i%2 == 1 {
			arrival += 80 // every other packet 10 ms late
		}
		s.rtpPacket(172, 0, uint16(i), uint32(160*i), 1, pcmu, arrival, int64(i))
	}
	if j := jitter(&s); j < 9*time.Millisecond || j > 10*time.Millisecond {
		t.Errorf("jitter %v with transit alternating by 10 ms, want it to converge near 10 ms", j)
	}

	// The same at 48 kHz (opus): the clock the payload type names times it.
	s = rxStats{}
	for i := range 400 {
		arrival := uint32(960 * i)
		if i%2 == 1 {
			arrival += 480
		}
		s.rtpPacket(172, 111, uint16(i), uint32(960*i), 1, 48000, arrival, int64(i))
	}
	if j := jitter(&s); j < 9*time.Millisecond || j > 10*time.Millisecond {
		t.Errorf("jitter %v at 48 kHz with transit alternating by 10 ms, want near 10 ms", j)
	}

	// RFC 4733 events repeat their timestamp: untimed, they add no jitter.
	s = rxStats{}
	for i := range 100 {
		ts, clock := uint32(160*i), uint32(pcmu)
		if i >= 40 && i < 60 {
			ts, clock = 160*40, 8000|ptUntimed|ptNotCodec
		}
		s.rtpPacket(172, 101, uint16(i), ts, 1, clock, uint32(160*i), int64(i))
	}
	if j := jitter(&s); j != 0 {
		t.Errorf("jitter %v with a telephone-event in the stream, want 0", j)
	}
}

func TestJitterFollowsClockChange(t *testing.T) {
	var s rxStats
	for i := range 400 {
		arrival := uint32(160 * i)
		if i%2 == 1 {
			arrival += 80
		}
		s.rtpPacket(172, 0, uint16(i), uint32(160*i), 1, pcmu, arrival, int64(i))
	}
	// The same source switches to a 16 kHz payload type: the estimate keeps its value.
	s.rtpPacket(172, 9, 400, 320*400, 1, 16000, 320*400, 401)
	var ls LegStats
	s.snapshot(&ls, false, nil)
	if ls.RTP.Jitter < 9*time.Millisecond || ls.RTP.Jitter > 10*time.Millisecond || ls.RTP.ClockRate != 16000 {
		t.Errorf("after the clock change jitter %v at %d Hz, want near 10 ms at 16000 Hz", ls.RTP.Jitter, ls.RTP.ClockRate)
	}
	if ls.RTP.MaxJitter < ls.RTP.Jitter {
		t.Errorf("max jitter %v below jitter %v", ls.RTP.MaxJitter, ls.RTP.Jitter)
	}
}

func TestPayloadTypesAndCodec(t *testing.T) {
	table := newPayloadTable([]PayloadType{{96, "opus", 48000}, {101, "telephone-event", 8000}, {13, "CN", 8000}}, 8000)
	var s rxStats
	for i, pt := range []uint8{96, 96, 101, 13, 96, 101} {
		s.rtpPacket(172, pt, uint16(i), uint32(960*i), 1, table.clock[pt], uint32(960*i), int64(i))
	}
	var ls LegStats
	s.snapshot(&ls, false, table)
	if got := ls.RTP.PayloadTypes.List(); !slices.Equal(got, []uint8{13, 96, 101}) {
		t.Errorf("payload types %v, want [13 96 101]", got)
	}
	if ls.RTP.Codec != "opus" || ls.RTP.CodecPT != 96 || ls.RTP.ClockRate != 48000 {
		t.Errorf("codec %q (%d) at %d Hz, want opus (96) at 48000: events and comfort noise are not the codec", ls.RTP.Codec, ls.RTP.CodecPT, ls.RTP.ClockRate)
	}
	if c := table.clock[0]; c != 8000 {
		t.Errorf("PCMU's clock entry %#x, want 8000 from RFC 3551", c)
	}
	if c := table.clock[97]; c != 8000 {
		t.Errorf("an unnamed dynamic payload type's clock %#x, want the stream's 8000", c)
	}
	if table.encoding(18) != "G729" || table.encoding(100) != "" {
		t.Errorf("encodings %q %q, want G729 and none", table.encoding(18), table.encoding(100))
	}
}

// FuzzSequence feeds the sequence tracking arbitrary sequence numbers (two bytes each) from
// one source: however they come, a packet is counted once as received or duplicate, and no
// more packets are lost than expected.
func FuzzSequence(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 0, 4, 0, 3, 0, 3})
	f.Add([]byte{0xff, 0xfe, 0, 1, 0xff, 0xff, 0x9c, 0x40, 0x9c, 0x41})
	f.Fuzz(func(t *testing.T, b []byte) {
		var s rxStats
		var seqs []uint16
		for i := 0; i+1 < len(b); i += 2 {
			seqs = append(seqs, binary.BigEndian.Uint16(b[i:]))
		}
		feed(&s, 1, seqs...)
		var ls LegStats
		s.snapshot(&ls, false, nil)
		r := ls.RTP
		distinct := int64(r.Expected) - r.Lost
		if r.Packets != uint64(len(seqs)) || r.Lost < 0 || distinct < 0 || uint64(distinct)+r.Duplicates > r.Packets || r.OutOfOrder > uint64(distinct) {
			t.Fatalf("%v: %+v", seqs, r)
		}
	})
}

func TestClockUnits(t *testing.T) {
	for _, tt := range []struct {
		ns   int64
		rate uint32
		want uint32
	}{
		{int64(time.Second), 8000, 8000},
		{int64(20 * time.Millisecond), 8000, 160},
		{int64(1000*time.Hour + 20*time.Millisecond), 90000, uint32((int64(1000*3600)*90000 + 1800) % (1 << 32))},
	} {
		if got := clockUnits(tt.ns, tt.rate); got != tt.want {
			t.Errorf("clockUnits(%d, %d) = %d, want %d", tt.ns, tt.rate, got, tt.want)
		}
	}
}
