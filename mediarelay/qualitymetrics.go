package mediarelay

import "github.com/prometheus/client_golang/prometheus"

// qualityMetrics are histograms of call quality, observed once per leg of a stream at its end
// (removal), for the legs that received RTP: how good calls were, without a label per call.
type qualityMetrics struct {
	mos, jitter, loss *prometheus.HistogramVec
}

func newQualityMetrics() *qualityMetrics {
	h := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "sipcar", Subsystem: "media", Name: name, Help: help, Buckets: buckets,
		}, []string{"side"})
	}
	return &qualityMetrics{
		mos: h("leg_mos", "MOS estimate (E-model) of each stream leg's RTP as it reached sipcar, at the stream's end; side is where the leg's peer is.",
			[]float64{1.5, 2, 2.5, 3, 3.5, 3.8, 4, 4.2, 4.3, 4.4}),
		jitter: h("leg_jitter_seconds", "Mean RFC 3550 interarrival jitter of each stream leg's RTP over the stream.",
			[]float64{.001, .002, .005, .01, .02, .03, .05, .1, .2}),
		loss: h("leg_loss_ratio", "Fraction of each stream leg's RTP lost before sipcar (sequence gaps), over the stream.",
			[]float64{0, .001, .005, .01, .02, .03, .05, .1, .2, .5}),
	}
}

// sideLabel is the side label of a leg: where its peer is.
func sideLabel(l Leg) string {
	if l == LegA {
		return "inside"
	}
	return "outside"
}

// streamEnded observes the quality of a removed stream's legs that received RTP. Nil-safe.
func (m *qualityMetrics) streamEnded(st StreamStats) {
	if m == nil {
		return
	}
	for l, ls := range [...]*LegStats{LegA: &st.A, LegB: &st.B} {
		if ls.RTP.Expected == 0 {
			continue
		}
		q := ls.Quality()
		side := sideLabel(Leg(l))
		m.mos.WithLabelValues(side).Observe(q.MOS)
		m.jitter.WithLabelValues(side).Observe(q.MeanJitterMs / 1000)
		m.loss.WithLabelValues(side).Observe(q.LossPercent / 100)
	}
}

func (m *qualityMetrics) describe(ch chan<- *prometheus.Desc) {
	m.mos.Describe(ch)
	m.jitter.Describe(ch)
	m.loss.Describe(ch)
}

func (m *qualityMetrics) collect(ch chan<- prometheus.Metric) {
	m.mos.Collect(ch)
	m.jitter.Collect(ch)
	m.loss.Collect(ch)
}
