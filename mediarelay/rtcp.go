package mediarelay

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/rtcp"
)

// RTCPPacket is an RTCP packet a stream's peer sent, as [Config.RTCP] receives it.
type RTCPPacket struct {
	Stream *Stream
	// Leg is the leg whose peer sent it; the relay forwards it to the other leg's peer.
	Leg Leg
	// Src is the peer, Dst the relay address it arrived at.
	Src, Dst netip.AddrPort
	Time     time.Time
	// Data is the packet (a compound RTCP packet, SRTCP on a Secure stream). It is the relay's
	// receive buffer: valid only until the callback returns.
	Data []byte
}

// RemoteReport is what a leg's peer says in RTCP (RFC 3550 6.4) about the media it receives
// (the other leg's, relayed), and the round trip between sipcar and the peer.
type RemoteReport struct {
	// Reports counts the report blocks taken: one per SR or RR, the one about the source the
	// relay forwards to the peer (else the first).
	Reports uint64
	// SSRC is the source the last block is about.
	SSRC uint32
	// FractionLost is the last block's fraction lost (0-1), since the peer's previous report.
	FractionLost float64
	// CumulativeLost is the last block's cumulative number of packets lost.
	CumulativeLost int64
	// Jitter is the last block's interarrival jitter, read with the clock of the media the
	// relay sends the peer.
	Jitter time.Duration
	// At is when the last block arrived.
	At time.Time
	// RTT is the mean round trip between sipcar and the peer, MaxRTT the longest, over
	// RTTSamples reports. A sample is the time from sipcar relaying a sender report to the peer
	// until the peer's report naming it (LSR) arrived, minus the delay the peer says it held it
	// (DLSR): sipcar's own clock at both ends, so the far end's clock does not matter.
	RTT, MaxRTT time.Duration
	RTTSamples  uint64
}

// rtcpLeg is the RTCP state of one leg: the sender reports relayed to its peer and what the
// peer reported. RTCP is a packet every few seconds per leg: a mutex is cheap enough.
type rtcpLeg struct {
	mu sync.Mutex // guards the following fields
	// srs are the last sender reports relayed to this leg's peer (the other leg's peer sent
	// them): the middle 32 bits of their NTP timestamp (what LSR echoes) and when they came.
	srs  [4]srRelayed
	next int
	// sender is the SSRC of the last sender report relayed to the peer: the report block about
	// it is the one to take.
	sender     uint32
	haveSender bool

	reports      uint64
	ssrc         uint32
	fraction     uint8
	cumLost      int64
	jitter, rate uint32 // timestamp units and their clock
	at           int64
	rttSum       int64
	rttMax       int64
	rttN         uint64
}

type srRelayed struct {
	mid uint32
	at  int64
}

// relayedSR notes a sender report from ssrc with NTP timestamp ntp, relayed to this leg's
// peer at now (unix ns).
func (l *rtcpLeg) relayedSR(ssrc uint32, ntp uint64, now int64) {
	l.mu.Lock()
	l.srs[l.next] = srRelayed{mid: uint32(ntp >> 16), at: now}
	l.next = (l.next + 1) % len(l.srs)
	l.sender, l.haveSender = ssrc, true
	l.mu.Unlock()
}

// report takes the report blocks of an SR or RR from this leg's peer that arrived at now;
// other is the SSRC of the RTP relayed to the peer (0: not known) and rate its clock.
func (l *rtcpLeg) report(blocks []rtcp.ReceptionReport, other, rate uint32, now int64) {
	if len(blocks) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := &blocks[0]
	for i := range blocks {
		if s := blocks[i].SSRC; (other != 0 && s == other) || (l.haveSender && s == l.sender) {
			b = &blocks[i]
			break
		}
	}
	l.reports++
	l.ssrc, l.fraction, l.at = b.SSRC, b.FractionLost, now
	l.cumLost = int64(b.TotalLost)
	if b.TotalLost&0x800000 != 0 {
		l.cumLost -= 1 << 24 // 24-bit two's complement: negative with duplicates
	}
	l.jitter, l.rate = b.Jitter, rate
	if b.LastSenderReport == 0 {
		return
	}
	for _, sr := range l.srs {
		if sr.at == 0 || sr.mid != b.LastSenderReport {
			continue
		}
		// DLSR is in units of 1/65536 s.
		rtt := now - sr.at - int64(uint64(b.Delay)*uint64(time.Second)>>16)
		// A sample below zero by more than the DLSR's rounding means the peer claims to have
		// held the SR longer than it was away: a wrong DLSR, no sample.
		if rtt >= -int64(time.Millisecond) {
			rtt = max(rtt, 0)
			l.rttSum += rtt
			l.rttMax = max(l.rttMax, rtt)
			l.rttN++
		}
		return
	}
}

func (l *rtcpLeg) snapshot(into *LegStats) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := &into.Remote
	r.Reports = l.reports
	if l.reports == 0 {
		return
	}
	r.SSRC = l.ssrc
	r.FractionLost = float64(l.fraction) / 256
	r.CumulativeLost = l.cumLost
	if l.rate > 0 {
		r.Jitter = unitsToDuration(l.jitter, l.rate)
	}
	r.At = time.Unix(0, l.at)
	if l.rttN > 0 {
		r.RTT = time.Duration(l.rttSum / int64(l.rttN))
		r.MaxRTT = time.Duration(l.rttMax)
		r.RTTSamples = l.rttN
	}
}

// rtcpReader reads the sender or receiver report at the head of compound RTCP packets with
// pion/rtcp, into buffers it reuses: nothing is allocated per packet.
type rtcpReader struct {
	sr rtcp.SenderReport
	rr rtcp.ReceiverReport

	// What read found: the report's sender, whether it is an SR (and its NTP timestamp), and
	// its report blocks (valid until the next read).
	sender uint32
	isSR   bool
	ntp    uint64
	blocks []rtcp.ReceptionReport
}

// maxReportBlocks is the most report blocks an SR or RR holds (a 5-bit count).
const maxReportBlocks = 31

func newRTCPReader() *rtcpReader {
	rd := &rtcpReader{}
	rd.sr.Reports = make([]rtcp.ReceptionReport, 0, maxReportBlocks)
	rd.rr.Reports = make([]rtcp.ReceptionReport, 0, maxReportBlocks)
	return rd
}

// read finds the first SR or RR of the compound RTCP packet pkt (RFC 3550 6.1 puts one first;
// a reduced-size packet, RFC 5506, may have none) and reports whether it found one that
// parses. It never panics on garbage: what does not parse is ignored (and still relayed).
func (rd *rtcpReader) read(pkt []byte) bool {
	rd.isSR, rd.ntp, rd.blocks = false, 0, nil
	for len(pkt) > 0 {
		var h rtcp.Header
		if h.Unmarshal(pkt) != nil {
			return false
		}
		size := (int(h.Length) + 1) * 4
		if size > len(pkt) {
			return false
		}
		p := pkt[:size]
		switch h.Type {
		case rtcp.TypeSenderReport:
			// Unmarshal appends to Reports; the capacity holds any count, so it never grows.
			rd.sr.Reports = rd.sr.Reports[:0]
			if rd.sr.Unmarshal(p) != nil {
				return false
			}
			rd.sender, rd.isSR, rd.ntp, rd.blocks = rd.sr.SSRC, true, rd.sr.NTPTime, rd.sr.Reports
			return true
		case rtcp.TypeReceiverReport:
			rd.rr.Reports = rd.rr.Reports[:0]
			if rd.rr.Unmarshal(p) != nil {
				return false
			}
			rd.sender, rd.blocks = rd.rr.SSRC, rd.rr.Reports
			return true
		}
		pkt = pkt[size:]
	}
	return false
}

// RTCPJSON describes a compound RTCP packet as the JSON Homer stores for HEP's RTCP protocol
// type (5), the shape captagent and heplify write: the first sender or receiver report's
// sender information, SSRC, type and report blocks, and the SDES SSRC. It allocates: call it
// off the packet path, on a copy of [RTCPPacket.Data]. A packet with no report that parses is
// an error.
func RTCPJSON(pkt []byte) ([]byte, error) {
	pkts, err := rtcp.Unmarshal(pkt)
	if err != nil {
		return nil, fmt.Errorf("rtcp json: %w", err)
	}
	var h homerRTCP
	found := false
	for _, p := range pkts {
		switch p := p.(type) {
		case *rtcp.SenderReport:
			if !found {
				found = true
				h.Type, h.SSRC = uint8(rtcp.TypeSenderReport), p.SSRC
				h.Sender = homerSenderInfo{NTPSec: uint32(p.NTPTime >> 32), NTPFrac: uint32(p.NTPTime),
					RTPTimestamp: p.RTPTime, Packets: p.PacketCount, Octets: p.OctetCount}
				h.Blocks = homerBlocks(p.Reports)
			}
		case *rtcp.ReceiverReport:
			if !found {
				found = true
				h.Type, h.SSRC = uint8(rtcp.TypeReceiverReport), p.SSRC
				h.Blocks = homerBlocks(p.Reports)
			}
		case *rtcp.SourceDescription:
			if len(p.Chunks) > 0 {
				h.SDESSSRC = p.Chunks[0].Source
			}
		}
	}
	if !found {
		return nil, errors.New("rtcp json: no sender or receiver report")
	}
	h.ReportCount = uint8(len(h.Blocks))
	return json.Marshal(h)
}

type homerRTCP struct {
	Sender      homerSenderInfo `json:"sender_information"`
	SSRC        uint32          `json:"ssrc"`
	Type        uint8           `json:"type"`
	ReportCount uint8           `json:"report_count"`
	Blocks      []homerBlock    `json:"report_blocks"`
	SDESSSRC    uint32          `json:"sdes_ssrc"`
}

type homerSenderInfo struct {
	NTPSec       uint32 `json:"ntp_timestamp_sec"`  // the NTP timestamp's most significant word
	NTPFrac      uint32 `json:"ntp_timestamp_usec"` // its least significant word, as captagent names it
	RTPTimestamp uint32 `json:"rtp_timestamp"`
	Packets      uint32 `json:"packets"`
	Octets       uint32 `json:"octets"`
}

type homerBlock struct {
	SourceSSRC   uint32 `json:"source_ssrc"`
	FractionLost uint8  `json:"fraction_lost"`
	PacketsLost  uint32 `json:"packets_lost"`
	HighestSeq   uint32 `json:"highest_seq_no"`
	Jitter       uint32 `json:"ia_jitter"`
	LSR          uint32 `json:"lsr"`
	DLSR         uint32 `json:"dlsr"`
}

func homerBlocks(rs []rtcp.ReceptionReport) []homerBlock {
	out := make([]homerBlock, 0, len(rs))
	for _, r := range rs {
		out = append(out, homerBlock{SourceSSRC: r.SSRC, FractionLost: r.FractionLost, PacketsLost: r.TotalLost,
			HighestSeq: r.LastSequenceNumber, Jitter: r.Jitter, LSR: r.LastSenderReport, DLSR: r.Delay})
	}
	return out
}
