package mediarelay

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// StreamStats is a snapshot of a stream's counters, per leg.
type StreamStats struct {
	CallID string
	Hold   bool
	A, B   LegStats
}

// LegStats counts what one leg's peer sent to the relay, and what the relay sent to it.
type LegStats struct {
	// Peer and PeerRTCP are the latched sources; invalid until a packet latched them. On a
	// muxed leg PeerRTCP is invalid.
	Peer, PeerRTCP netip.AddrPort
	// Final says the RTP latch is final (the learning window is over, or the SDP address spoke).
	Final bool

	RTP  RTPStats
	RTCP Counts
	// Sent counts packets relayed to this leg's peer (RTP and RTCP); SentRTCP the part of them
	// that left from the leg's own RTCP port (zero on a muxed leg).
	Sent, SentRTCP Counts
	// Bleed counts packets dropped because they came from a source other than the peer.
	Bleed uint64
	// LastPacket is when the last packet from the peer arrived; zero before the first.
	LastPacket time.Time
	// Kernel says the peer's RTP is forwarded by the kernel now (see [KernelMode]): RTP packet
	// and byte counts (and Sent on the other leg) include what it forwarded, but Lost, Jitter
	// and SSRC only describe the packets that came through userspace, before the hand-over.
	// RTCP always comes through userspace.
	Kernel bool
}

// Counts counts packets and their UDP payload bytes.
type Counts struct {
	Packets, Bytes uint64
}

// RTPStats describes the RTP a leg's peer sent, as RFC 3550 receiver reports do.
type RTPStats struct {
	Counts
	SSRC uint32
	// Lost is the expected minus the received packets of the current SSRC, from sequence
	// number gaps (negative with duplicates).
	Lost int64
	// Jitter is the RFC 3550 interarrival jitter estimate.
	Jitter time.Duration
}

// counter is a packet and byte counter written with atomic adds.
type counter struct {
	packets, bytes atomic.Uint64
}

func (c *counter) add(n int) {
	c.packets.Add(1)
	c.bytes.Add(uint64(n))
}

func (c *counter) load() Counts {
	return Counts{Packets: c.packets.Load(), Bytes: c.bytes.Load()}
}

// rxStats is what an endpoint received. Usually one worker writes it (SO_REUSEPORT hashes a
// flow to one socket, a fallback port belongs to one worker), but a peer change can move a
// flow, so a mutex keeps the sequence and jitter state consistent; it is never contended in
// the steady state.
type rxStats struct {
	mu          sync.Mutex // guards the following fields
	rtp         Counts
	rtcp        Counts
	bleed       uint64
	last        int64 // unix nanoseconds
	seq         seqState
	jitter      uint32 // RFC 3550 A.8: 16 times the estimate, in timestamp units
	transit     uint32
	haveTransit bool
}

// Sequence tracking after RFC 3550 A.1.
const (
	maxDropout  = 3000
	maxMisorder = 100
)

type seqState struct {
	init     bool
	ssrc     uint32
	maxSeq   uint16
	cycles   uint32
	baseSeq  uint32
	badSeq   uint32
	received uint32
}

// rtpPacket records an RTP packet: seq, ts and ssrc from its header, arrival in timestamp
// units, now in unix nanoseconds.
func (s *rxStats) rtpPacket(n int, seq uint16, ts, ssrc, arrival uint32, now int64) {
	s.mu.Lock()
	s.rtp.Packets++
	s.rtp.Bytes += uint64(n)
	s.last = now
	q := &s.seq
	switch {
	case !q.init || ssrc != q.ssrc:
		*q = seqState{init: true, ssrc: ssrc, maxSeq: seq, baseSeq: uint32(seq), badSeq: 1 << 17}
		s.jitter, s.haveTransit = 0, false
	default:
		delta := seq - q.maxSeq
		switch {
		case delta < maxDropout:
			if seq < q.maxSeq {
				q.cycles += 1 << 16
			}
			q.maxSeq = seq
		case delta <= 1<<16-maxMisorder:
			// A jump too large: the source restarted unless this is the first packet of it.
			if uint32(seq) == q.badSeq {
				*q = seqState{init: true, ssrc: ssrc, maxSeq: seq, baseSeq: uint32(seq), badSeq: 1 << 17}
			} else {
				q.badSeq = uint32(seq+1) & 0xffff
				s.mu.Unlock()
				return
			}
		}
	}
	q.received++
	transit := arrival - ts
	if s.haveTransit {
		d := int32(transit - s.transit)
		if d < 0 {
			d = -d
		}
		s.jitter += uint32(d) - ((s.jitter + 8) >> 4)
	}
	s.transit, s.haveTransit = transit, true
	s.mu.Unlock()
}

// otherPacket counts a packet on an RTP port that is not RTP version 2 (STUN, DTLS, ZRTP):
// relayed and counted, but not part of the sequence and jitter figures.
func (s *rxStats) otherPacket(n int, now int64) {
	s.mu.Lock()
	s.rtp.Packets++
	s.rtp.Bytes += uint64(n)
	s.last = now
	s.mu.Unlock()
}

func (s *rxStats) rtcpPacket(n int, now int64) {
	s.mu.Lock()
	s.rtcp.Packets++
	s.rtcp.Bytes += uint64(n)
	s.last = now
	s.mu.Unlock()
}

func (s *rxStats) bleedPacket() {
	s.mu.Lock()
	s.bleed++
	s.mu.Unlock()
}

// activity is the number of packets the endpoint accepted.
func (s *rxStats) activity() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rtp.Packets + s.rtcp.Packets
}

func (s *rxStats) snapshot(into *LegStats, rtcpPort bool, clockRate uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last > 0 && (into.LastPacket.IsZero() || s.last > into.LastPacket.UnixNano()) {
		into.LastPacket = time.Unix(0, s.last)
	}
	into.Bleed += s.bleed
	into.RTCP.Packets += s.rtcp.Packets
	into.RTCP.Bytes += s.rtcp.Bytes
	if rtcpPort {
		return
	}
	into.RTP.Counts = s.rtp
	q := &s.seq
	if q.init {
		into.RTP.SSRC = q.ssrc
		expected := int64(q.cycles) + int64(q.maxSeq) - int64(q.baseSeq) + 1
		into.RTP.Lost = expected - int64(q.received)
	}
	if clockRate > 0 {
		into.RTP.Jitter = time.Duration(uint64(s.jitter>>4) * uint64(time.Second) / uint64(clockRate))
	}
}

// clockUnits converts nanoseconds to RTP timestamp units at rate Hz, modulo 2^32 as RTP
// timestamps are.
func clockUnits(ns int64, rate uint32) uint32 {
	sec, frac := ns/int64(time.Second), ns%int64(time.Second)
	return uint32(sec*int64(rate) + frac*int64(rate)/int64(time.Second))
}
