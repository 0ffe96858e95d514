package mediarelay

import (
	"testing"
	"time"
)

func TestSequenceLoss(t *testing.T) {
	tests := []struct {
		name     string
		seqs     []uint16
		received uint64
		lost     int64
	}{
		{"in order", []uint16{1, 2, 3, 4}, 4, 0},
		{"gap", []uint16{1, 2, 5, 6}, 4, 2},
		{"wrap", []uint16{65534, 65535, 0, 2}, 4, 1},
		{"reordered", []uint16{1, 3, 2, 4}, 4, 0},
		{"duplicate", []uint16{1, 2, 2, 3}, 4, -1},
		{"restart after a jump, confirmed by the next packet", []uint16{1, 2, 40000, 40001, 40003}, 5, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s rxStats
			for i, q := range tt.seqs {
				s.rtpPacket(172, q, uint32(160*i), 7, uint32(160*i), int64(i))
			}
			var ls LegStats
			s.snapshot(&ls, false, 8000)
			if ls.RTP.Packets != tt.received || ls.RTP.Lost != tt.lost {
				t.Errorf("packets %d lost %d, want %d %d", ls.RTP.Packets, ls.RTP.Lost, tt.received, tt.lost)
			}
		})
	}
}

func TestSSRCChangeRestartsSequence(t *testing.T) {
	var s rxStats
	s.rtpPacket(172, 10, 0, 1, 0, 1)
	s.rtpPacket(172, 20, 160, 1, 160, 2) // 9 lost
	s.rtpPacket(172, 500, 0, 2, 320, 3)  // a new source
	s.rtpPacket(172, 501, 160, 2, 480, 4)
	var ls LegStats
	s.snapshot(&ls, false, 8000)
	if ls.RTP.SSRC != 2 || ls.RTP.Lost != 0 || ls.RTP.Packets != 4 {
		t.Errorf("SSRC %d lost %d packets %d, want 2, 0 (the new source's), 4", ls.RTP.SSRC, ls.RTP.Lost, ls.RTP.Packets)
	}
}

func TestJitterConstantDelayIsZero(t *testing.T) {
	var s rxStats
	for i := range 50 {
		s.rtpPacket(172, uint16(i), uint32(160*i), 1, uint32(160*i)+777, int64(i))
	}
	var ls LegStats
	s.snapshot(&ls, false, 8000)
	if ls.RTP.Jitter != 0 {
		t.Errorf("jitter %v with a constant transit time, want 0", ls.RTP.Jitter)
	}
	s = rxStats{}
	for i := range 400 {
		arrival := uint32(160 * i)
		if i%2 == 1 {
			arrival += 80 // every other packet 10 ms late
		}
		s.rtpPacket(172, uint16(i), uint32(160*i), 1, arrival, int64(i))
	}
	ls = LegStats{}
	s.snapshot(&ls, false, 8000)
	if ls.RTP.Jitter < 9*time.Millisecond || ls.RTP.Jitter > 10*time.Millisecond {
		t.Errorf("jitter %v with transit alternating by 10 ms, want it to converge near 10 ms", ls.RTP.Jitter)
	}
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
