package relay

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the relay's Prometheus collectors (namespace sipcar, subsystem sip).
type metrics struct {
	received  *prometheus.CounterVec // by side and transport
	forwarded *prometheus.CounterVec // by side it went to and transport
	malformed *prometheus.CounterVec // by transport
	dropped   *prometheus.CounterVec // by reason
	answered  *prometheus.CounterVec // sipcar's own responses, by status code
	// connsRefused counts TCP and TLS connections closed at once by a cap (per-source, total) or
	// for want of descriptors; connsClosed those closed later, by why (handshake-timeout,
	// handshake-failed, message-timeout, idle, framing).
	connsRefused, connsClosed *prometheus.CounterVec
	// calls counts calls with relayed media by the IP family of each side's party.
	calls    *prometheus.CounterVec
	logLimit *rateLog
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sipcar", Subsystem: "sip", Name: name, Help: help}, labels)
	}
	m := &metrics{
		received:     vec("messages_received_total", "SIP messages received, by the side they came from and transport.", "side", "transport"),
		forwarded:    vec("messages_forwarded_total", "SIP messages forwarded, by the side they went to and transport.", "side", "transport"),
		malformed:    vec("messages_malformed_total", "SIP messages refused as malformed.", "transport"),
		dropped:      vec("messages_dropped_total", "SIP messages not forwarded, by reason.", "reason"),
		answered:     vec("responses_sent_total", "Responses sipcar sent itself, by status code.", "code"),
		connsRefused: vec("connections_refused_total", "TCP and TLS connections closed at once: a cap reached (per-source, total) or no descriptor left (descriptors).", "reason"),
		connsClosed:  vec("connections_closed_total", "TCP and TLS connections sipcar closed, by reason: handshake-timeout, handshake-failed, message-timeout, idle, framing.", "reason"),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sipcar", Name: "calls_total",
			Help: "Calls whose media sipcar relayed, by the IP family of the outside and the inside party (ipv4, ipv6), counted when the call's first stream had both."},
			[]string{"outside", "inside"}),
		logLimit: &rateLog{every: 10 * time.Second, last: make(map[netip.Addr]time.Time)},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.received, m.forwarded, m.malformed, m.dropped, m.answered, m.connsRefused, m.connsClosed, m.calls} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if !errors.As(err, &are) {
					return nil, err
				}
			}
		}
	}
	return m, nil
}

// rateLog allows one log line per source address per interval.
type rateLog struct {
	every time.Duration
	mu    sync.Mutex
	last  map[netip.Addr]time.Time
}

func (l *rateLog) allow(a netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[a]; ok && now.Sub(t) < l.every {
		return false
	}
	if len(l.last) > 10000 {
		clear(l.last)
	}
	l.last[a] = now
	return true
}
