package mediarelay

import (
	"encoding/binary"
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

// naiveChecksum is RFC 768's checksum written the obvious way, 16 bits at a time.
func naiveChecksum(src, dst []byte, udp []byte) uint16 {
	var pseudo []byte
	pseudo = append(pseudo, src...)
	pseudo = append(pseudo, dst...)
	pseudo = append(pseudo, 0, 17, byte(len(udp)>>8), byte(len(udp)))
	data := append(pseudo, udp...)
	if len(data)%2 == 1 {
		data = append(data, 0)
	}
	var sum uint32
	for i := 0; i < len(data); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(data[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func TestPutUDPHeader(t *testing.T) {
	for _, tt := range []struct{ src, dst string }{
		{"198.51.100.1:20002", "198.51.100.2:40000"},
		{"[2001:db8:b::1]:20002", "[2001:db8:b::2]:40000"},
	} {
		for _, n := range []int{1, 12, 171, 172} {
			var src, dst sockaddr
			src.set(ap(tt.src))
			dst.set(ap(tt.dst))
			slot := make([]byte, slotSize)
			for i := range n {
				slot[headroom+i] = byte(i*7 + 3)
			}
			start := putUDPHeader(slot, n, &src, &dst)
			udp := slot[start : headroom+n]
			if binary.BigEndian.Uint16(udp[0:]) != 20002 || binary.BigEndian.Uint16(udp[2:]) != 40000 || int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
				t.Errorf("%s: UDP header % x", tt.src, udp[:8])
			}
			got := binary.BigEndian.Uint16(udp[6:])
			zeroed := append([]byte(nil), udp...)
			zeroed[6], zeroed[7] = 0, 0
			s, d := src.ip[:], dst.ip[:]
			if src.v4 {
				s, d = s[:4], d[:4]
			}
			if want := naiveChecksum(s, d, zeroed); got != want {
				t.Errorf("%s, %d bytes: checksum %#04x, want %#04x", tt.src, n, got, want)
			}
		}
	}
}
