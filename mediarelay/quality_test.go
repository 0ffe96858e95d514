package mediarelay

import (
	"encoding/json"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestMOSKnownPoints(t *testing.T) {
	for _, tt := range []struct {
		name   string
		loss   float64
		jitter time.Duration
		rtt    time.Duration
		codec  string
		r, mos float64
	}{
		// R 93.2: nothing impairs G.711. MOS = 1 + 0.035*93.2 + 7e-6*93.2*33.2*6.8.
		{"G.711, perfect", 0, 0, 0, "PCMU", 93.2, 4.409},
		// Ie_eff = 95*5/(5+25.1) = 15.78.
		{"G.711, 5% loss", 0.05, 0, 0, "PCMA", 77.42, 3.923},
		// Ie_eff = 95*20/(20+25.1) = 42.13.
		{"G.711, 20% loss", 0.2, 0, 0, "PCMU", 51.07, 2.631},
		// d = 150 + 20 ms: Id = 0.024*170 = 4.08.
		{"G.711, 300 ms RTT and 20 ms jitter", 0, 20 * time.Millisecond, 300 * time.Millisecond, "PCMU", 89.12, 4.317},
		// d = 250 ms: Id = 6 + 0.11*72.7 = 14.0.
		{"G.711, 500 ms RTT", 0, 0, 500 * time.Millisecond, "PCMU", 79.2, 3.993},
		// Ie 11.
		{"G.729, perfect", 0, 0, 0, "G729", 82.2, 4.104},
		// Ie_eff = 11 + 84*2/(2+19) = 19.
		{"G.729, 2% loss", 0.02, 0, 0, "G729", 74.2, 3.787},
		// Ie 15; Ie_eff = 15 + 80*1/(1+16.1) = 19.68.
		{"G.723.1, 1% loss", 0.01, 0, 0, "G723", 73.52, 3.757},
		{"an unknown codec counts as G.711", 0, 0, 0, "opus", 93.2, 4.409},
		// Ie_eff = 95*100/125.1 = 75.94.
		{"all lost", 1, 0, 0, "PCMU", 17.26, 1.177},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := RFactor(tt.loss, tt.jitter, tt.rtt, tt.codec)
			if math.Abs(r-tt.r) > 0.01 {
				t.Errorf("R = %.3f, want %.2f", r, tt.r)
			}
			if m := MOS(r); math.Abs(m-tt.mos) > 0.005 {
				t.Errorf("MOS(%.2f) = %.4f, want %.3f", r, m, tt.mos)
			}
		})
	}
	for r, want := range map[float64]float64{-5: 1, 0: 1, 6: 1, 100: 4.5, 120: 4.5} {
		if m := MOS(r); m != want {
			t.Errorf("MOS(%v) = %v, want %v", r, m, want)
		}
	}
	// MOS falls as R falls.
	for r := 1.0; r < 100; r++ {
		if MOS(r) > MOS(r+1) {
			t.Errorf("MOS(%v) = %v above MOS(%v) = %v", r, MOS(r), r+1, MOS(r+1))
		}
	}
}

func TestLegQuality(t *testing.T) {
	var ls LegStats
	ls.Peer, ls.Local = ap("198.51.100.20:21000"), ap("198.51.100.1:20002")
	ls.RTP = RTPStats{Counts: Counts{Packets: 950, Bytes: 950 * 172}, SSRC: 0x5eed, Expected: 1000, Lost: 50, Duplicates: 0,
		Jitter: 7 * time.Millisecond, MeanJitter: 6 * time.Millisecond, MaxJitter: 12 * time.Millisecond, ClockRate: 8000, CodecPT: 0, Codec: "PCMU"}
	ls.RTP.PayloadTypes.add(0)
	ls.RTP.PayloadTypes.add(101)
	ls.Remote = RemoteReport{Reports: 3, SSRC: 0xb0b, FractionLost: 0.02, CumulativeLost: 7, Jitter: 3 * time.Millisecond,
		RTT: 40 * time.Millisecond, MaxRTT: 60 * time.Millisecond, RTTSamples: 2}
	q := ls.Quality()
	// d = 20 + 6 ms; Id = 0.624; Ie_eff = 15.78.
	wantR := 93.2 - 0.024*26 - 95*5/(5+25.1)
	if q.LossPercent != 5 || q.MeanJitterMs != 6 || *q.RTTMs != 40 || math.Abs(q.RFactor-wantR) > 0.01 || q.MOS != round(MOS(wantR), 2) {
		t.Errorf("quality %+v; want 5%% lost, mean jitter 6 ms, RTT 40 ms, R %.2f", q, wantR)
	}
	if q.Remote == nil || q.Remote.Reports != 3 || q.Remote.FractionLost != 0.02 || q.Remote.MOS <= q.MOS {
		t.Errorf("remote %+v; want the peer's report, its MOS above the leg's (2%% lost against 5%%)", q.Remote)
	}
	if got := q.String(); got != "loss 5.00% jitter 7.0ms (mean 6.0ms) rtt 40.0ms mos 3.90 (peer reports loss 2.00% jitter 3.0ms)" {
		t.Errorf("String() = %q", got)
	}
	js, err := json.Marshal(q)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"payload_types":[0,101]`, `"codec":"PCMU"`, `"loss_percent":5`, `"rtt_ms":40`, `"peer":"198.51.100.20:21000"`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("JSON %s lacks %s", js, want)
		}
	}

	at := time.Date(2026, 1, 1, 12, 0, 0, 500000000, time.UTC)
	rep := q.Report("call-1@example", at, true)
	var m map[string]any
	if err := json.Unmarshal(rep.JSON(), &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"CORRELATION_ID": "call-1@example", "TYPE": "HANGUP", "SRC_IP": "198.51.100.20", "SRC_PORT": 21000.0,
		"DST_IP": "198.51.100.1", "DST_PORT": 20002.0, "PACKET_LOSS": 50.0, "EXPECTED_PK": 1000.0, "JITTER": 7.0, "MEAN_JITTER": 6.0,
		"MOS": q.MOS, "RFACTOR": q.RFactor, "CODEC_PT": 0.0, "CODEC_NAME": "PCMU", "DELTA": 40.0, "REPORT_TS": 1767268800.5} {
		if m[k] != want {
			t.Errorf("report %s = %v, want %v", k, m[k], want)
		}
	}

	// A leg with no RTP yet.
	var none LegStats
	none.RTP.CodecPT = -1
	if q := none.Quality(); q.String() != "no rtp" || q.RTTMs != nil || q.Remote != nil || q.LossPercent != 0 {
		t.Errorf("quality of a leg without RTP: %+v %q", q, q.String())
	}
	if r := none.Quality().Report("c", at, false); r.SrcIP != "" || r.Type != "PERIODIC" || r.CodecPT != -1 {
		t.Errorf("report of a leg without RTP: %+v", r)
	}
	_ = netip.AddrPort{}
}
