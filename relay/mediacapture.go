package relay

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/relay/hep"
)

// mediaCapture sends the HEP collector what the media relay sees: every RTCP packet a peer sent
// (HEP type 5, the JSON Homer shows) and, when a stream ends, each leg's quality report (HEP type
// 34, as RTPAgent and rtpengine send it), all under the call's Call-ID.
//
// The media relay hands over RTCP on its packet path, where turning it into JSON (which
// allocates) does not belong: the packet is copied into a buffer from a pool and queued, and
// run's goroutine encodes it. A full queue drops the packet and counts it; relaying never waits.
type mediaCapture struct {
	capture Capturer
	queue   chan rtcpCopy
	bufs    sync.Pool
	dropped prometheus.Counter
}

// rtcpCopy is an RTCP packet waiting for the encoder.
type rtcpCopy struct {
	callID   string
	src, dst netip.AddrPort
	at       time.Time
	data     *[]byte
}

// rtcpQueue is how many RTCP packets may wait for the encoder: RTCP is a packet every few
// seconds per leg, so this covers bursts of thousands of calls.
const rtcpQueue = 1024

func newMediaCapture(c Capturer) *mediaCapture {
	mc := &mediaCapture{capture: c, queue: make(chan rtcpCopy, rtcpQueue),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sipcar", Subsystem: "hep", Name: "rtcp_dropped_total",
			Help: "RTCP packets not exported to the HEP collector: the queue to the encoder was full (export never slows relaying)."})}
	mc.bufs.New = func() any { b := make([]byte, 0, 1500); return &b }
	return mc
}

// rtcp queues a copy of an RTCP packet the media relay accepted. SRTCP is left out: only its
// header is clear, so its report would be noise.
func (mc *mediaCapture) rtcp(p *mediarelay.RTCPPacket) {
	if p.Stream.Secure() {
		return
	}
	b := mc.bufs.Get().(*[]byte)
	*b = append((*b)[:0], p.Data...)
	select {
	case mc.queue <- rtcpCopy{callID: p.Stream.CallID(), src: p.Src, dst: p.Dst, at: p.Time, data: b}:
	default:
		mc.bufs.Put(b)
		mc.dropped.Inc()
	}
}

// run encodes queued RTCP packets and hands them to the capturer until ctx is done. Like the
// exporter's writer, it looks at the queue every few milliseconds while packets come rather than
// being woken by each one on the media path.
func (mc *mediaCapture) run(ctx context.Context) {
	hep.DrainQueue(ctx, mc.queue, mc.encode, nil)
}

// encode hands one RTCP packet to the capturer as Homer's JSON.
func (mc *mediaCapture) encode(c rtcpCopy) {
	js, err := mediarelay.RTCPJSON(*c.data)
	mc.bufs.Put(c.data)
	if err != nil {
		return // no sender or receiver report in it (an APP or BYE alone)
	}
	mc.capture.Send(hep.Packet{Src: c.src, Dst: c.dst, Transport: hep.UDP, Time: c.at,
		Proto: hep.ProtoRTCP, Correlation: c.callID, Payload: js})
}

// ended sends the quality report of each leg of a stream that carried media from its peer.
func (mc *mediaCapture) ended(s *mediarelay.Stream, st mediarelay.StreamStats) {
	now := time.Now()
	for _, leg := range []mediarelay.LegStats{st.A, st.B} {
		if !leg.Peer.IsValid() {
			continue // the peer never sent: nothing measured
		}
		q := leg.Quality()
		mc.capture.Send(hep.Packet{Src: q.Peer, Dst: q.Relay, Transport: hep.UDP, Time: now,
			Proto: hep.ProtoReport, Correlation: s.CallID(), Payload: q.Report(s.CallID(), now, true).JSON()})
	}
}
