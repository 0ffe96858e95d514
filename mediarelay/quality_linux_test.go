package mediarelay

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// rtcpLog records what Config.RTCP receives, copying each packet as it must.
type rtcpLog struct {
	mu   sync.Mutex
	pkts []RTCPPacket
}

func (l *rtcpLog) add(p *RTCPPacket) {
	c := *p
	c.Data = bytes.Clone(p.Data)
	l.mu.Lock()
	l.pkts = append(l.pkts, c)
	l.mu.Unlock()
}

func (l *rtcpLog) all() []RTCPPacket {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]RTCPPacket(nil), l.pkts...)
}

// TestQualityThroughRelay sends RTP and RTCP through a running relay, both ways, at known
// times: the remote party's sender report reaches the phone, whose receiver report naming it
// comes back 30 ms later after a DLSR of 10 ms; the leg's quality shows the 20 ms round trip,
// the report's figures, and loss, duplicates and reordering of the phone's RTP. Config.RTCP gets
// every RTCP packet, and the stream's end goes to the histograms.
func TestQualityThroughRelay(t *testing.T) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			clock := &testClock{}
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			clock.set(start)
			var seen rtcpLog
			r := l.startRelay(t, m, Config{Clock: clock.now, RTCP: seen.add})
			f := families[0]
			spec := pairSpec(f)
			spec.PayloadTypes = []PayloadType{{0, "PCMU", 8000}, {101, "telephone-event", 8000}}
			phone := l.listen(t, l.phone, spec.A.Peer.String())
			phoneRTCP := l.listen(t, l.phone, spec.A.peerRTCP().String())
			remote := l.listen(t, l.remote, spec.B.Peer.String())
			remoteRTCP := l.listen(t, l.remote, spec.B.peerRTCP().String())
			s := addStream(t, r, spec)

			// The phone's RTP: 1, 2, 4 (3 lost), 6, 5 (late), 5 again, 7..10; the remote's
			// 1..10, which the phone's report is about.
			at := func(ms int) { clock.set(start.Add(time.Duration(ms) * time.Millisecond)) }
			for i, seq := range []uint16{1, 2, 4, 6, 5, 5, 7, 8, 9, 10} {
				at(20 * i)
				p := rtpPacket(seq, 160*uint32(seq), 0xa, byte(i))
				phone.send(spec.A.RTP, p)
				remote.expect(p, spec.B.RTP)
			}
			for i := range 10 {
				at(200 + 20*i)
				p := rtpPacket(uint16(i+1), 160*uint32(i), 0xb, byte(i))
				remote.send(spec.B.RTP, p)
				phone.expect(p, spec.A.RTP)
			}

			ntp := uint64(0xeebe6cc7_64341a00)
			sr := compound(t, &rtcp.SenderReport{SSRC: 0xb, NTPTime: ntp, PacketCount: 10, OctetCount: 1600}, sdes(0xb))
			at(1000)
			remoteRTCP.send(spec.B.RTCP, sr)
			phoneRTCP.expect(sr, spec.A.RTCP)
			rr := compound(t, &rtcp.ReceiverReport{SSRC: 0xa, Reports: []rtcp.ReceptionReport{{SSRC: 0xb, FractionLost: 13,
				TotalLost: 1, LastSequenceNumber: 10, Jitter: 16, LastSenderReport: uint32(ntp >> 16), Delay: 655}}}, sdes(0xa))
			at(1030)
			phoneRTCP.send(spec.A.RTCP, rr)
			remoteRTCP.expect(rr, spec.B.RTCP)

			q := s.Quality().A
			if q.Packets != 10 || q.Expected != 10 || q.Lost != 1 || q.Duplicates != 1 || q.OutOfOrder != 1 || q.Codec != "PCMU" {
				t.Errorf("phone's leg %+v; want 10 packets, 10 expected, 1 lost, 1 duplicate, 1 out of order, PCMU", q)
			}
			// 655/65536 s of DLSR is 9.994 ms.
			wantRTT := 30*time.Millisecond - 655*time.Second/65536
			if q.RTTMs == nil || *q.RTTMs != ms(wantRTT) {
				t.Errorf("round trip %v ms, want %v", q.RTTMs, ms(wantRTT))
			}
			if q.Remote == nil || q.Remote.Reports != 1 || q.Remote.SSRC != 0xb || q.Remote.CumulativeLost != 1 || q.Remote.JitterMs != 2 {
				t.Errorf("phone's report %+v; want one block about 0xb, 1 lost, jitter 16 units (2 ms)", q.Remote)
			}
			if b := s.Quality().B; b.Remote != nil || b.RTTMs != nil || b.Expected != 10 || b.Lost != 0 {
				t.Errorf("remote's leg %+v; want 10 packets in order and no report", b)
			}

			got := seen.all()
			if len(got) != 2 || got[0].Leg != LegB || got[0].Src != spec.B.peerRTCP() || got[0].Dst != spec.B.RTCP || !bytes.Equal(got[0].Data, sr) ||
				got[1].Leg != LegA || !bytes.Equal(got[1].Data, rr) || got[1].Stream != s || !got[1].Time.Equal(start.Add(1030*time.Millisecond)) {
				t.Errorf("Config.RTCP got %+v; want the SR from leg B's peer and the RR from leg A's", got)
			}

			reg := prometheus.NewRegistry()
			reg.MustRegister(NewCollector(r))
			r.RemoveStream(s)
			r.RemoveStream(s) // once
			want := `
# HELP sipcar_media_leg_loss_ratio Fraction of each stream leg's RTP lost before sipcar (sequence gaps), over the stream.
# TYPE sipcar_media_leg_loss_ratio histogram
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0"} 0
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.001"} 0
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.005"} 0
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.01"} 0
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.02"} 0
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.03"} 0
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.05"} 0
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.1"} 1
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.2"} 1
sipcar_media_leg_loss_ratio_bucket{side="inside",le="0.5"} 1
sipcar_media_leg_loss_ratio_bucket{side="inside",le="+Inf"} 1
sipcar_media_leg_loss_ratio_sum{side="inside"} 0.1
sipcar_media_leg_loss_ratio_count{side="inside"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.001"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.005"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.01"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.02"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.03"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.05"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.1"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.2"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="0.5"} 1
sipcar_media_leg_loss_ratio_bucket{side="outside",le="+Inf"} 1
sipcar_media_leg_loss_ratio_sum{side="outside"} 0
sipcar_media_leg_loss_ratio_count{side="outside"} 1
`
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "sipcar_media_leg_loss_ratio"); err != nil {
				t.Error(err)
			}
			if n := testutil.CollectAndCount(NewCollector(r), "sipcar_media_leg_mos", "sipcar_media_leg_jitter_seconds"); n != 4 {
				t.Errorf("%d MOS and jitter series, want one per side each", n)
			}
		})
	}
}
