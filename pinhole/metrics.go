package pinhole

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Map's Prometheus collectors, namespace "sipcar", subsystem "pinhole":
//
//	sipcar_pinhole_bindings{type}                         bindings in the server map
//	sipcar_pinhole_calls                                  calls holding media pairs
//	sipcar_pinhole_ports{range,state}                     ports of each range in_use and free
//	sipcar_pinhole_allocations_failed_total{range,reason} no_ports, call_limit
//	sipcar_pinhole_expirations_total{reason}              bindings released, by Reason
type metrics struct {
	bindings    [TypeRTCP + 1]prometheus.Gauge
	calls       prometheus.Gauge
	noPorts     [TypeRTCP + 1]prometheus.Counter // by the type that failed (sip or sip-rtp)
	limited     prometheus.Counter               // media: a cap on calls, streams or ports reached
	limitedSig  prometheus.Counter               // a source's cap on sip bindings reached
	expirations [reasonCount]prometheus.Counter
}

const (
	namespace = "sipcar"
	subsystem = "pinhole"
)

func newMetrics(reg prometheus.Registerer, m *Map) (*metrics, error) {
	bindings := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "bindings",
		Help: "Bindings in the server map, by type.",
	}, []string{"type"})
	calls := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "calls",
		Help: "Calls holding media port pairs.",
	})
	failed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "allocations_failed_total",
		Help: "Allocations refused: no_ports (range exhausted or unbindable), call_limit (a cap on calls, streams or a source's ports reached), source_limit (a source's cap on signaling bindings reached).",
	}, []string{"range", "reason"})
	expirations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Subsystem: subsystem, Name: "expirations_total",
		Help: "Bindings released, by reason.",
	}, []string{"reason"})

	mt := &metrics{calls: calls, limited: failed.WithLabelValues("media", "call_limit"),
		limitedSig: failed.WithLabelValues("signaling", "source_limit")}
	for t := TypeSIP; t <= TypeRTCP; t++ {
		mt.bindings[t] = bindings.WithLabelValues(t.String())
	}
	mt.noPorts[TypeSIP] = failed.WithLabelValues("signaling", "no_ports")
	mt.noPorts[TypeRTP] = failed.WithLabelValues("media", "no_ports")
	mt.noPorts[TypeRTCP] = mt.noPorts[TypeRTP]
	for r := ReasonLifetime; r < reasonCount; r++ {
		mt.expirations[r] = expirations.WithLabelValues(r.String())
	}
	if reg == nil {
		return mt, nil
	}

	collectors := []prometheus.Collector{bindings, calls, failed, expirations}
	for _, pr := range []struct {
		name string
		p    *pool
	}{{"media", m.mediaPool}, {"signaling", m.sigPool}} {
		p := pr.p
		for _, state := range []string{"in_use", "free"} {
			collectors = append(collectors, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: namespace, Subsystem: subsystem, Name: "ports",
				Help:        "Ports of each range, in use and free.",
				ConstLabels: prometheus.Labels{"range": pr.name, "state": state},
			}, func() float64 {
				free, used := p.usage()
				if state == "free" {
					return float64(free * int(p.step))
				}
				return float64(used * int(p.step))
			}))
		}
	}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return mt, nil
}

// failed counts an allocation of typ that failed with err.
func (mt *metrics) failed(typ Type, err error) {
	if errors.Is(err, ErrNoPorts) {
		mt.noPorts[typ].Inc()
	}
}
