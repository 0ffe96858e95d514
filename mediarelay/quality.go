package mediarelay

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"
)

// LegQuality is the call quality of one leg: the RTP its peer sent as it reached sipcar
// (loss from sequence numbers, RFC 3550 jitter), what the peer reported in RTCP about the
// media sipcar sends it, and an R-factor and MOS estimate. It is what the session table shows
// and what a HEP quality report carries.
//
// The estimate is ITU-T G.107's E-model simplified, as rtpengine computes it:
//
//	d       = RTT/2 + jitter                              one-way delay, ms
//	Id      = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)     delay impairment (Cole & Rosenbluth)
//	Ie_eff  = Ie + (95 - Ie) Ppl / (Ppl + Bpl)            loss impairment, random loss (BurstR 1)
//	R       = 93.2 - Id - Ie_eff
//	MOS     = 1 + 0.035 R + 7e-6 R (R - 60) (100 - R)     R clipped to 0-100, MOS to 1-4.5
//
// Ppl is the loss in percent of the RTP the peer sent (as it reached sipcar), jitter the mean
// of sipcar's RFC 3550 estimate of it over the call (the estimate itself follows the last 16
// packets or so), RTT the round trip between sipcar and the peer from RTCP (0 while
// no report timed it), and Ie and Bpl the codec's impairment and loss robustness from ITU-T
// G.113 Appendix I: G.711 (PCMU, PCMA) 0 and 25.1 (with packet loss concealment, as phones
// have it), G.729 11 and 19.0, G.723.1 15 and 16.1. Codecs the table does not name count as
// G.711: the narrowband E-model cannot rate wideband ones (G.722, Opus), which sound better.
// With no loss, no jitter and no RTT, G.711 scores R 93.2, MOS 4.41.
//
// So the MOS rates the media as it arrives at sipcar: the path from the peer, not the whole
// path to the listener. RemoteQuality rates the rest, from what the other side reports.
type LegQuality struct {
	Peer  netip.AddrPort `json:"peer"`  // the latched source; invalid before a packet
	Relay netip.AddrPort `json:"relay"` // sipcar's address the peer sends to
	SSRC  uint32         `json:"ssrc"`

	Packets  uint64 `json:"packets"`
	Bytes    uint64 `json:"bytes"`
	Expected uint64 `json:"expected"`
	Lost     int64  `json:"lost"`
	// LossPercent is Lost over Expected, in percent (0 when it is negative).
	LossPercent float64 `json:"loss_percent"`
	Duplicates  uint64  `json:"duplicates"`
	OutOfOrder  uint64  `json:"out_of_order"`
	// JitterMs is the RFC 3550 estimate now, MeanJitterMs its mean over the call so far (what
	// the MOS is computed from), MaxJitterMs its highest.
	JitterMs     float64 `json:"jitter_ms"`
	MeanJitterMs float64 `json:"mean_jitter_ms"`
	MaxJitterMs  float64 `json:"max_jitter_ms"`
	PayloadTypes []int   `json:"payload_types"`
	// CodecPT is the payload type of the codec (-1: none yet), Codec its encoding name.
	CodecPT   int    `json:"codec_pt"`
	Codec     string `json:"codec"`
	ClockRate uint32 `json:"clock_rate"`
	// RTTMs is the mean round trip between sipcar and the peer from RTCP; null while no report
	// timed one.
	RTTMs    *float64 `json:"rtt_ms"`
	MaxRTTMs *float64 `json:"max_rtt_ms"`

	RFactor float64 `json:"r_factor"`
	MOS     float64 `json:"mos"`

	// Remote is what the peer reported in RTCP; null when it sent no report.
	Remote *RemoteQuality `json:"remote"`
}

// RemoteQuality is what a leg's peer reports in RTCP about the media sipcar sends it, and the
// MOS the same E-model gives it (from the report's fraction lost and jitter, and the RTT).
type RemoteQuality struct {
	Reports        uint64  `json:"reports"`
	SSRC           uint32  `json:"ssrc"`
	FractionLost   float64 `json:"fraction_lost"`
	CumulativeLost int64   `json:"cumulative_lost"`
	JitterMs       float64 `json:"jitter_ms"`
	MOS            float64 `json:"mos"`
}

// StreamQuality is a stream's quality per leg: A's peer is the inside party, B's the outside.
type StreamQuality struct {
	CallID string     `json:"call_id"`
	A      LegQuality `json:"a"`
	B      LegQuality `json:"b"`
}

// Quality returns the stream's call quality so far. Safe at any time, also after the stream
// was removed (the figures at its end).
func (s *Stream) Quality() StreamQuality { return s.Stats().Quality() }

// Quality computes the quality of each leg from the counters.
func (st StreamStats) Quality() StreamQuality {
	return StreamQuality{CallID: st.CallID, A: st.A.Quality(), B: st.B.Quality()}
}

// Quality computes the leg's quality from its counters.
func (ls LegStats) Quality() LegQuality {
	r := &ls.RTP
	q := LegQuality{
		Peer: ls.Peer, Relay: ls.Local, SSRC: r.SSRC,
		Packets: r.Packets, Bytes: r.Bytes, Expected: r.Expected, Lost: r.Lost,
		Duplicates: r.Duplicates, OutOfOrder: r.OutOfOrder,
		JitterMs: ms(r.Jitter), MeanJitterMs: ms(r.MeanJitter), MaxJitterMs: ms(r.MaxJitter), CodecPT: r.CodecPT, Codec: r.Codec, ClockRate: r.ClockRate,
	}
	for _, pt := range r.PayloadTypes.List() {
		q.PayloadTypes = append(q.PayloadTypes, int(pt))
	}
	loss := 0.0
	if r.Expected > 0 && r.Lost > 0 {
		loss = float64(r.Lost) / float64(r.Expected)
	}
	q.LossPercent = round(100*loss, 3)
	rem := &ls.Remote
	if rem.RTTSamples > 0 {
		rtt, maxRTT := ms(rem.RTT), ms(rem.MaxRTT)
		q.RTTMs, q.MaxRTTMs = &rtt, &maxRTT
	}
	rf := RFactor(loss, r.MeanJitter, rem.RTT, r.Codec)
	q.RFactor, q.MOS = round(rf, 2), round(MOS(rf), 2)
	if rem.Reports > 0 {
		// The media the peer reports on is the other leg's codec; its own is the best guess.
		rrf := RFactor(rem.FractionLost, rem.Jitter, rem.RTT, r.Codec)
		q.Remote = &RemoteQuality{Reports: rem.Reports, SSRC: rem.SSRC, FractionLost: round(rem.FractionLost, 4),
			CumulativeLost: rem.CumulativeLost, JitterMs: ms(rem.Jitter), MOS: round(MOS(rrf), 2)}
	}
	return q
}

// String is the leg's quality on one line, for the session table.
func (q LegQuality) String() string {
	if q.Expected == 0 {
		return "no rtp"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "loss %.2f%% jitter %.1fms (mean %.1fms)", q.LossPercent, q.JitterMs, q.MeanJitterMs)
	if q.RTTMs != nil {
		fmt.Fprintf(&b, " rtt %.1fms", *q.RTTMs)
	}
	fmt.Fprintf(&b, " mos %.2f", q.MOS)
	if q.Remote != nil {
		fmt.Fprintf(&b, " (peer reports loss %.2f%% jitter %.1fms)", 100*q.Remote.FractionLost, q.Remote.JitterMs)
	}
	return b.String()
}

// RFactor is the E-model's rating (see [LegQuality]) of media with the given loss (0-1),
// jitter and round trip, in codec (an encoding name: "PCMU", "G729", ...).
func RFactor(loss float64, jitter, rtt time.Duration, codec string) float64 {
	d := ms(rtt)/2 + ms(jitter)
	id := 0.024 * d
	if d > 177.3 {
		id += 0.11 * (d - 177.3)
	}
	ie, bpl := codecImpairment(codec)
	ppl := 100 * min(max(loss, 0), 1)
	ieEff := ie + (95-ie)*ppl/(ppl+bpl)
	return 93.2 - id - ieEff
}

// MOS maps an R-factor to a mean opinion score (ITU-T G.107 Annex B), 1 to 4.5.
func MOS(r float64) float64 {
	switch {
	case r <= 0:
		return 1
	case r >= 100:
		return 4.5
	}
	return max(1, 1+0.035*r+7e-6*r*(r-60)*(100-r))
}

// codecImpairment returns a codec's equipment impairment Ie and packet-loss robustness Bpl
// (ITU-T G.113 Appendix I).
func codecImpairment(encoding string) (ie, bpl float64) {
	switch strings.ToUpper(encoding) {
	case "G729", "G729A", "G729B", "G729AB":
		return 11, 19
	case "G723", "G7231":
		return 15, 16.1
	}
	return 0, 25.1
}

// QualityReport is a leg's quality as a HEP quality report (HEP protocol type 34, JSON) carries
// it, with the keys RTPAgent's reports use, which Homer (heplify-server) reads.
type QualityReport struct {
	CorrelationID string  `json:"CORRELATION_ID"`
	CallID        string  `json:"RTP_SIP_CALL_ID"`
	ReportTS      float64 `json:"REPORT_TS"` // unix seconds
	Type          string  `json:"TYPE"`      // "PERIODIC", or "HANGUP" at the stream's end
	SrcIP         string  `json:"SRC_IP"`    // the peer
	SrcPort       uint16  `json:"SRC_PORT"`
	DstIP         string  `json:"DST_IP"` // sipcar
	DstPort       uint16  `json:"DST_PORT"`
	SSRC          uint32  `json:"SSRC"`
	CodecPT       int     `json:"CODEC_PT"`
	CodecName     string  `json:"CODEC_NAME"`
	Clock         uint32  `json:"CLOCK"`
	TotalPackets  uint64  `json:"TOTAL_PK"`
	ExpectedPk    uint64  `json:"EXPECTED_PK"`
	PacketLoss    int64   `json:"PACKET_LOSS"`
	TotalBytes    uint64  `json:"TL_BYTE"`
	OutOfOrder    uint64  `json:"OUT_ORDER"`
	Duplicates    uint64  `json:"DUPLICATE"`
	Jitter        float64 `json:"JITTER"` // ms
	MeanJitter    float64 `json:"MEAN_JITTER"`
	MaxJitter     float64 `json:"MAX_JITTER"`
	Delta         float64 `json:"DELTA"` // round trip, ms (0: not known)
	RFactor       float64 `json:"RFACTOR"`
	MOS           float64 `json:"MOS"`
}

// Report returns the leg's quality as a HEP quality report of the call callID at time at; final
// marks the report sent at the stream's end.
func (q LegQuality) Report(callID string, at time.Time, final bool) QualityReport {
	r := QualityReport{
		CorrelationID: callID, CallID: callID, ReportTS: float64(at.UnixMicro()) / 1e6, Type: "PERIODIC",
		SrcIP: addrString(q.Peer), SrcPort: q.Peer.Port(), DstIP: addrString(q.Relay), DstPort: q.Relay.Port(),
		SSRC: q.SSRC, CodecPT: q.CodecPT, CodecName: q.Codec, Clock: q.ClockRate,
		TotalPackets: q.Packets, ExpectedPk: q.Expected, PacketLoss: q.Lost, TotalBytes: q.Bytes,
		OutOfOrder: q.OutOfOrder, Duplicates: q.Duplicates, Jitter: q.JitterMs, MeanJitter: q.MeanJitterMs, MaxJitter: q.MaxJitterMs,
		RFactor: q.RFactor, MOS: q.MOS,
	}
	if final {
		r.Type = "HANGUP"
	}
	if q.RTTMs != nil {
		r.Delta = *q.RTTMs
	}
	return r
}

// JSON encodes the report (it has no field that fails to encode).
func (r QualityReport) JSON() []byte {
	b, _ := json.Marshal(r)
	return b
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.Addr().String()
}

func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}
