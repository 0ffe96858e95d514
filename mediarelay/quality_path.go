package mediarelay

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// The packet goroutine's part of quality analysis: what forward calls per RTP and RTCP packet,
// on every platform.

// rxQuality is a packet goroutine's own quality state.
type rxQuality struct {
	rtcp *rtcpReader // made at the first RTCP packet
	ev   RTCPPacket  // what Config.RTCP gets, reused
	// units is the batch's arrival time (unitsAt, rxState.sinceBase) in units of a clock of
	// unitsRate Hz: the packets of a batch mostly share their clock, so it is computed once.
	units     uint32
	unitsRate uint32
	unitsAt   int64
}

// rtpPacket analyses an RTP packet (version 2, at least a header long) from e's peer: the
// fields are read by hand, which costs a fraction of pion/rtp's full header parse (see
// rtpheader_test.go), and the payload type's clock times the arrival.
func (st *rxState) rtpPacket(e *endpoint, n int, p []byte) {
	pt := p[1] & 0x7f
	var clock uint32
	if int(pt) < len(staticClock) && staticClock[pt] != 0 {
		clock = staticClock[pt]
	} else {
		clock = e.stream.clock[pt].Load()
	}
	if rate := clock & ptRateMask; rate != st.q.unitsRate || st.sinceBase != st.q.unitsAt {
		st.q.units, st.q.unitsRate, st.q.unitsAt = clockUnits(st.sinceBase, rate), rate, st.sinceBase
	}
	e.rx.rtpPacket(n, pt, binary.BigEndian.Uint16(p[2:4]), binary.BigEndian.Uint32(p[4:8]), binary.BigEndian.Uint32(p[8:12]),
		clock, st.q.units, st.nowNs)
}

// rtcpPacket reads the report of an RTCP packet from e's peer (src, arriving at dst) and hands
// the packet to Config.RTCP. A sender report is about to be relayed to the other leg's peer,
// whose reports will name it: noted there for the round trip. Report blocks are what e's peer
// says of the media relayed to it, the other leg's RTP.
func (st *rxState) rtcpPacket(e *endpoint, src, dst netip.AddrPort, p []byte) {
	r, s := st.r, e.stream
	if !r.cfg.NoQuality && !s.secure.Load() {
		if st.q.rtcp == nil {
			st.q.rtcp = newRTCPReader()
		}
		if rd := st.q.rtcp; rd.read(p) {
			if rd.isSR {
				s.rtcp[1-e.leg].relayedSR(rd.sender, rd.ntp, st.nowNs)
			}
			if len(rd.blocks) > 0 {
				ssrc, rate := s.eps[epIndex(1-e.leg, false)].rx.source()
				s.rtcp[e.leg].report(rd.blocks, ssrc, rate, st.nowNs)
			}
		}
	}
	if f := r.cfg.RTCP; f != nil {
		st.q.ev = RTCPPacket{Stream: s, Leg: e.leg, Src: src, Dst: dst, Time: time.Unix(0, st.nowNs), Data: p}
		f(&st.q.ev)
		st.q.ev = RTCPPacket{}
	}
}
