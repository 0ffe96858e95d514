package replica

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the replica's Prometheus collectors, namespace "sipcar", subsystem "replica":
//
//	sipcar_replica_redis_up                 1 while the last exchange with Redis succeeded
//	sipcar_replica_degraded                 1 while the active cannot write its changes (no replication)
//	sipcar_replica_term                     the term this sipcar took (0: none, a standby)
//	sipcar_replica_writes_total{result}     script calls: ok, error, lost, fenced
//	sipcar_replica_records_written_total{op} records set and deleted in Redis
//	sipcar_replica_pending_records          changed records not written yet
//	sipcar_replica_redis_round_trips_total  exchanges with Redis (a script call or a read)
//	sipcar_replica_copy_records             records in a standby's copy
//	sipcar_replica_standby_current          1 while a standby could take over
//	sipcar_replica_lag_seconds              time since a standby last read the log to its end
type metrics struct {
	redisUp    prometheus.Gauge
	degraded   prometheus.Gauge
	term       prometheus.Gauge
	writes     *prometheus.CounterVec
	set, del   prometheus.Counter
	pending    prometheus.Gauge
	roundTrips prometheus.Counter
	copy       prometheus.Gauge
	current    prometheus.Gauge
	lag        prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	opts := func(name, help string) prometheus.GaugeOpts {
		return prometheus.GaugeOpts{Namespace: "sipcar", Subsystem: "replica", Name: name, Help: help}
	}
	records := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sipcar", Subsystem: "replica",
		Name: "records_written_total", Help: "Records of the call state written to Redis, by op (set, delete)."}, []string{"op"})
	m := &metrics{
		redisUp:  prometheus.NewGauge(opts("redis_up", "1 while the last exchange with Redis succeeded.")),
		degraded: prometheus.NewGauge(opts("degraded", "1 while the active sipcar cannot write its changes to Redis: calls go on, without replication.")),
		term:     prometheus.NewGauge(opts("term", "The term this sipcar took as the active one; 0 while it is a standby.")),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sipcar", Subsystem: "replica", Name: "writes_total",
			Help: "Batches written to Redis, by result: ok, error (Redis unreachable), lost (Redis had lost its data), fenced."}, []string{"result"}),
		set:     records.WithLabelValues("set"),
		del:     records.WithLabelValues("delete"),
		pending: prometheus.NewGauge(opts("pending_records", "Changed records not written to Redis yet.")),
		roundTrips: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "sipcar", Subsystem: "replica", Name: "redis_round_trips_total",
			Help: "Exchanges with Redis: script calls, reads (a pipeline counts once)."}),
		copy:    prometheus.NewGauge(opts("copy_records", "Records in a standby's copy of the call state.")),
		current: prometheus.NewGauge(opts("standby_current", "1 while a standby's copy is current, so that it can take over.")),
		lag:     prometheus.NewGauge(opts("lag_seconds", "Time since a standby last read the replication log to its end.")),
	}
	for _, r := range []string{"ok", "error", "lost", "fenced"} {
		m.writes.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.redisUp, m.degraded, m.term, m.writes, records, m.pending, m.roundTrips, m.copy, m.current, m.lag} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}

func (m *metrics) up(ok bool) {
	if ok {
		m.redisUp.Set(1)
	} else {
		m.redisUp.Set(0)
	}
}
