package mediarelay

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// The worker's part of quality analysis: what handle calls per RTP and RTCP packet.

// workerQuality is a worker's own quality state.
type workerQuality struct {
	rtcp *rtcpReader // made at the first RTCP packet
	ev   RTCPPacket  // what Config.RTCP gets, reused
	// units is the batch's arrival time (unitsAt, worker.sinceBase) in units of a clock of
	// unitsRate Hz: the packets of a batch mostly share their clock, so it is computed once.
	units     uint32
	unitsRate uint32
	unitsAt   int64
}

// rtpPacket analyses an RTP packet (version 2, at least a header long) from e's peer: the
// fields are read by hand, which costs a fraction of pion/rtp's full header parse (see
// rtpheader_test.go), and the payload type's clock times the arrival.
func (w *worker) rtpPacket(e *endpoint, n int, p []byte) {
	pt := p[1] & 0x7f
	var clock uint32
	if int(pt) < len(staticClock) && staticClock[pt] != 0 {
		clock = staticClock[pt]
	} else {
		clock = e.stream.clock[pt].Load()
	}
	if rate := clock & ptRateMask; rate != w.q.unitsRate || w.sinceBase != w.q.unitsAt {
		w.q.units, w.q.unitsRate, w.q.unitsAt = clockUnits(w.sinceBase, rate), rate, w.sinceBase
	}
	e.rx.rtpPacket(n, pt, binary.BigEndian.Uint16(p[2:4]), binary.BigEndian.Uint32(p[4:8]), binary.BigEndian.Uint32(p[8:12]),
		clock, w.q.units, w.nowNs)
}

// rtcpPacket reads the report of an RTCP packet from e's peer (src, arriving at dst) and hands
// the packet to Config.RTCP. A sender report is about to be relayed to the other leg's peer,
// whose reports will name it: noted there for the round trip. Report blocks are what e's peer
// says of the media relayed to it, the other leg's RTP.
func (w *worker) rtcpPacket(e *endpoint, src, dst netip.AddrPort, p []byte) {
	r, s := w.r, e.stream
	if !r.cfg.NoQuality && !s.secure.Load() {
		if w.q.rtcp == nil {
			w.q.rtcp = newRTCPReader()
		}
		if rd := w.q.rtcp; rd.read(p) {
			if rd.isSR {
				s.rtcp[1-e.leg].relayedSR(rd.sender, rd.ntp, w.nowNs)
			}
			if len(rd.blocks) > 0 {
				ssrc, rate := s.eps[epIndex(1-e.leg, false)].rx.source()
				s.rtcp[e.leg].report(rd.blocks, ssrc, rate, w.nowNs)
			}
		}
	}
	if f := r.cfg.RTCP; f != nil {
		w.q.ev = RTCPPacket{Stream: s, Leg: e.leg, Src: src, Dst: dst, Time: time.Unix(0, w.nowNs), Data: p}
		f(&w.q.ev)
		w.q.ev = RTCPPacket{}
	}
}
