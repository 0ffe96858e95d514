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
	// Local is the relay's RTP address on this leg, where the peer sends.
	Local netip.AddrPort
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
	// Remote is what the peer reported in RTCP about the media the relay sends it.
	Remote RemoteReport
}

// Counts counts packets and their UDP payload bytes.
type Counts struct {
	Packets, Bytes uint64
}

// RTPStats describes the RTP a leg's peer sent, as RFC 3550 receiver reports do. The
// sequence figures (Expected, Lost, Duplicates, OutOfOrder) add up over the SSRCs the peer
// used in turn; Jitter is the current SSRC's. They stay zero when the relay's quality
// analysis is off ([Config.NoQuality]).
type RTPStats struct {
	Counts
	SSRC uint32
	// Expected is the number of packets the sequence numbers span (RFC 3550 A.3: extended
	// highest minus first, plus one), summed over the SSRCs.
	Expected uint64
	// Lost is Expected minus the distinct packets received: a duplicate does not make up for
	// a lost packet (unlike RFC 3550's cumulative count). It is negative only when packets from
	// before the first one seen arrive more than 128 late.
	Lost int64
	// Duplicates counts packets whose sequence number arrived before (within the last 128);
	// OutOfOrder, packets that arrived after a later one, duplicates excluded.
	Duplicates, OutOfOrder uint64
	// Jitter is the RFC 3550 A.8 interarrival jitter estimate, in the clock of the payload
	// type last timed; MeanJitter its mean over the packets since the first, MaxJitter the
	// highest it was.
	Jitter, MeanJitter, MaxJitter time.Duration
	// ClockRate is the clock of the payload type last timed (Hz).
	ClockRate uint32
	// PayloadTypes are the payload types seen. CodecPT is the last one that is the call's
	// codec (not an RFC 4733 event or comfort noise), -1 before one came, and Codec its
	// encoding: "PCMU", "opus", ... ("" if neither the SDP nor RFC 3551 names it).
	PayloadTypes PayloadTypeSet
	CodecPT      int
	Codec        string
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
//
// The fields are laid out for the per-packet path: with quality analysis off it writes the
// first line (mutex, counts, last); with it on, the next too (sequence, jitter), and the one
// after that only for what is rare (reordering, a new source).
type rxStats struct {
	mu   sync.Mutex // guards the following fields
	rtp  Counts
	last int64 // unix nanoseconds

	// What every RTP packet reads and writes with quality analysis on: 64 bytes.
	seq seqState
	// RFC 3550 A.8: jitter is 16 times the estimate, in units of rate; maxJitter likewise,
	// and jitterSum the sum of the estimates after each of jitterN packets.
	jitter, transit, rate uint32
	jitterN, maxJitter    uint32
	haveTransit           bool
	haveCodec             bool
	codecPT               uint8
	lastPT                uint8 // the payload type of the last packet, plus one (0: none yet)
	jitterSum             uint64

	rare  seqRare
	pts   PayloadTypeSet
	rtcp  Counts
	bleed uint64
	// done sums the sequence figures of the SSRCs (and restarts) before the current one.
	done seqTotals
}

// Sequence tracking after RFC 3550 A.1.
const (
	maxDropout  = 3000
	maxMisorder = 100
)

// seqState is the sequence state of the current source that every packet needs.
type seqState struct {
	init     bool
	maxSeq   uint16
	ssrc     uint32
	cycles   uint32
	received uint32 // distinct packets
	// seen has bit i set when sequence number maxSeq-i arrived (i < 128): a packet that
	// arrives again within that window is a duplicate, one that fills a hole arrived late.
	seen [2]uint64
}

// seqRare is the rest of it, which changes only with reordering, duplicates or a new source.
type seqRare struct {
	dups, late uint32
	badSeq     uint32
	baseSeq    int64 // extended
}

type seqTotals struct {
	expected, received, dups, late uint64
}

// restart starts counting a new source (or the same one after a jump) at seq, adding what
// the previous one counted to the totals.
func (s *rxStats) restart(ssrc uint32, seq uint16) {
	if s.seq.init {
		s.done.expected += uint64(s.expected())
		s.done.received += uint64(s.seq.received)
		s.done.dups += uint64(s.rare.dups)
		s.done.late += uint64(s.rare.late)
	}
	s.seq = seqState{init: true, ssrc: ssrc, maxSeq: seq, received: 1, seen: [2]uint64{1, 0}}
	s.rare = seqRare{baseSeq: int64(seq), badSeq: 1 << 17}
}

// expected is the number of packets the current source's sequence numbers span.
func (s *rxStats) expected() int64 {
	return int64(s.seq.cycles) + int64(s.seq.maxSeq) - s.rare.baseSeq + 1
}

// advance moves the window up by n sequence numbers and marks the new highest as seen.
func (q *seqState) advance(n uint16) {
	switch {
	case n >= 128:
		q.seen = [2]uint64{}
	case n >= 64:
		q.seen = [2]uint64{0, q.seen[0] << (n - 64)}
	default:
		q.seen = [2]uint64{q.seen[0] << n, q.seen[1]<<n | q.seen[0]>>(64-n)}
	}
	q.seen[0] |= 1
}

// rtpPacket records an RTP packet: payload type, seq, ts and ssrc from its header, the
// payload type's clock entry (payloadTable.clock), arrival in units of that clock, now in
// unix nanoseconds.
func (s *rxStats) rtpPacket(n int, pt uint8, seq uint16, ts, ssrc, clock, arrival uint32, now int64) {
	s.mu.Lock()
	s.rtp.Packets++
	s.rtp.Bytes += uint64(n)
	s.last = now
	if pt+1 != s.lastPT {
		s.lastPT = pt + 1
		s.pts.add(pt)
	}
	q := &s.seq
	dup := false
	switch {
	case !q.init || ssrc != q.ssrc:
		s.restart(ssrc, seq)
		s.haveTransit = false
	default:
		switch delta := seq - q.maxSeq; {
		case delta == 0:
			s.rare.dups++
			dup = true
		case delta < maxDropout:
			if seq < q.maxSeq {
				q.cycles += 1 << 16
			}
			q.maxSeq = seq
			q.advance(delta)
			q.received++
		case delta <= 1<<16-maxMisorder:
			// A jump too large: the source restarted unless this is the first packet of it.
			if uint32(seq) != s.rare.badSeq {
				s.rare.badSeq = uint32(seq+1) & 0xffff
				s.mu.Unlock()
				return
			}
			s.restart(ssrc, seq)
			s.haveTransit = false
		default:
			// Late, by back sequence numbers (at most maxMisorder).
			back := q.maxSeq - seq
			word, bit := back>>6, uint64(1)<<(back&63)
			if back < 128 && q.seen[word]&bit != 0 {
				s.rare.dups++
				dup = true
				break
			}
			if back < 128 {
				q.seen[word] |= bit
			}
			q.received++
			s.rare.late++
			if ext := int64(q.cycles) + int64(q.maxSeq) - int64(back); ext < s.rare.baseSeq {
				s.rare.baseSeq = ext // from before the first packet seen
			}
		}
	}
	if clock&ptNotCodec == 0 {
		s.codecPT, s.haveCodec = pt, true
	}
	if clock&ptUntimed == 0 && !dup {
		// A duplicate is the same packet again, not a new sample of the path's delay.
		s.timePacket(clock&ptRateMask, ts, arrival)
	}
	s.mu.Unlock()
}

// timePacket updates the jitter estimate with a packet sent at ts that arrived at arrival,
// both in units of rate. Callers hold s.mu.
func (s *rxStats) timePacket(rate, ts, arrival uint32) {
	if rate != s.rate {
		// Another clock (the payload type changed): the estimate carries over in the new unit,
		// but transit times in the old one cannot be compared with the new.
		if s.rate != 0 {
			s.jitter = uint32(uint64(s.jitter) * uint64(rate) / uint64(s.rate))
			s.maxJitter = uint32(uint64(s.maxJitter) * uint64(rate) / uint64(s.rate))
			s.jitterSum = s.jitterSum * uint64(rate) / uint64(s.rate)
		}
		s.rate, s.haveTransit = rate, false
	}
	transit := arrival - ts
	if s.haveTransit {
		d := int32(transit - s.transit)
		if d < 0 {
			d = -d
		}
		s.jitter += uint32(d) - ((s.jitter + 8) >> 4)
		if s.jitter > s.maxJitter {
			s.maxJitter = s.jitter
		}
		s.jitterSum += uint64(s.jitter)
		s.jitterN++
	}
	s.transit, s.haveTransit = transit, true
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

// source returns the SSRC of the RTP the endpoint receives (0 before any) and the clock of
// its payload type.
func (s *rxStats) source() (ssrc, rate uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seq.init {
		ssrc = s.seq.ssrc
	}
	return ssrc, s.rate
}

// activity is the number of packets the endpoint accepted.
func (s *rxStats) activity() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rtp.Packets + s.rtcp.Packets
}

func (s *rxStats) snapshot(into *LegStats, rtcpPort bool, payloads *payloadTable) {
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
	st := &into.RTP
	st.Counts = s.rtp
	t := s.done
	if q := &s.seq; q.init {
		st.SSRC = q.ssrc
		t.expected += uint64(s.expected())
		t.received += uint64(q.received)
		t.dups += uint64(s.rare.dups)
		t.late += uint64(s.rare.late)
	}
	st.Expected = t.expected
	st.Lost = int64(t.expected) - int64(t.received)
	st.Duplicates, st.OutOfOrder = t.dups, t.late
	if s.rate > 0 {
		st.ClockRate = s.rate
		st.Jitter = unitsToDuration(s.jitter>>4, s.rate)
		st.MaxJitter = unitsToDuration(s.maxJitter>>4, s.rate)
		if s.jitterN > 0 {
			mean := s.jitterSum / uint64(s.jitterN) // 16 times, below 2^32: the product fits
			st.MeanJitter = time.Duration(mean * uint64(time.Second) / 16 / uint64(s.rate))
		}
	}
	st.PayloadTypes = s.pts
	st.CodecPT = -1
	if s.haveCodec {
		st.CodecPT = int(s.codecPT)
		if payloads != nil {
			st.Codec = payloads.encoding(s.codecPT)
		}
	}
}

// unitsToDuration converts n units of an RTP clock at rate Hz to a duration.
func unitsToDuration(n, rate uint32) time.Duration {
	return time.Duration(uint64(n) * uint64(time.Second) / uint64(rate))
}

// clockUnits converts nanoseconds to RTP timestamp units at rate Hz, modulo 2^32 as RTP
// timestamps are.
func clockUnits(ns int64, rate uint32) uint32 {
	sec, frac := ns/int64(time.Second), ns%int64(time.Second)
	return uint32(sec*int64(rate) + frac*int64(rate)/int64(time.Second))
}
