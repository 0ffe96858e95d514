package mediarelay

import "github.com/prometheus/client_golang/prometheus"

// Collector exports the relay's counters to Prometheus (namespace sipcar, subsystem media),
// read at scrape time: the packet path pays nothing for them. Per-stream figures (loss, jitter)
// go to the session table, not to labels, so that metrics do not grow with calls; histograms
// of them, one observation per stream leg at its end, say how good calls were.
type Collector struct {
	r                                                     *Relay
	forwarded, dropped, received, streams, lost, recvPath *prometheus.Desc
}

// NewCollector returns a Collector of r; register it with a prometheus.Registerer.
func NewCollector(r *Relay) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("sipcar", "media", name), help, labels, nil)
	}
	return &Collector{
		r:         r,
		forwarded: d("packets_forwarded_total", "RTP and RTCP packets relayed to the other leg."),
		dropped:   d("packets_dropped_total", "Packets not relayed, by reason.", "reason"),
		received:  d("packets_received_total", "Packets read, by the path they came by: fan-in (the nftables TPROXY rule) or per-port (each relay port's socket).", "path"),
		recvPath: d("receive_path", "1 for the path the media of each side takes where it arrives (ingress interface), and why it was chosen (reason).",
			"side", "ingress", "path", "reason"),
		streams: d("streams", "Media streams being relayed."),
		lost:    d("rtp_packets_lost", "RTP packets lost on the way to sipcar (sequence gaps), summed over the streams being relayed."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.forwarded
	ch <- c.dropped
	ch <- c.received
	ch <- c.recvPath
	ch <- c.streams
	ch <- c.lost
	if c.r.quality != nil {
		c.r.quality.describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	cs := c.r.Counters()
	ch <- prometheus.MustNewConstMetric(c.forwarded, prometheus.CounterValue, float64(cs.Forwarded))
	for reason, n := range cs.Dropped {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(n), reason)
	}
	for _, p := range []Path{PathFanIn, PathPerPort} {
		ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, float64(cs.Received[p]), p.String())
	}
	for _, p := range c.r.Paths() {
		ch <- prometheus.MustNewConstMetric(c.recvPath, prometheus.GaugeValue, 1, p.Side, p.Ingress, p.Path.String(), p.Reason)
	}
	streams := c.r.Streams()
	var lost int64
	for _, s := range streams {
		st := s.Stats()
		lost += max(st.A.RTP.Lost, 0) + max(st.B.RTP.Lost, 0)
	}
	ch <- prometheus.MustNewConstMetric(c.streams, prometheus.GaugeValue, float64(len(streams)))
	ch <- prometheus.MustNewConstMetric(c.lost, prometheus.GaugeValue, float64(lost))
	if c.r.quality != nil {
		c.r.quality.collect(ch)
	}
}
