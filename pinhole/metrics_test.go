package pinhole

import (
	"errors"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metricValue returns the value of the series of name whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			if g := s.GetGauge(); g != nil {
				return g.GetValue()
			}
			return s.GetCounter().GetValue()
		}
	}
	t.Fatalf("no series %s%v", name, want)
	return 0
}

func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		m, _ := newTestMap(t, Config{Registerer: reg, MediaPorts: PortRange{20000, 20003}, MaxCalls: 1})
		runMap(t, m)
		check := func(name string, labels map[string]string, want float64) {
			t.Helper()
			if got := metricValue(t, reg, name, labels); got != want {
				t.Errorf("%s%v = %v, want %v", name, labels, got, want)
			}
		}
		m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "c")
		offer(t, m, "c", Inside, "198.18.0.10:3000")
		check("sipcar_pinhole_bindings", map[string]string{"type": "sip"}, 1)
		check("sipcar_pinhole_bindings", map[string]string{"type": "sip-rtp"}, 1)
		check("sipcar_pinhole_bindings", map[string]string{"type": "sip-rtcp"}, 1)
		check("sipcar_pinhole_calls", nil, 1)
		check("sipcar_pinhole_ports", map[string]string{"range": "media", "state": "in_use"}, 2)
		check("sipcar_pinhole_ports", map[string]string{"range": "media", "state": "free"}, 2)
		check("sipcar_pinhole_ports", map[string]string{"range": "signaling", "state": "in_use"}, 1)
		check("sipcar_pinhole_ports", map[string]string{"range": "signaling", "state": "free"}, 9999)

		tx := m.Begin("c2", netip.Addr{})
		if _, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.11:3000")}); !errors.Is(err, ErrCallLimit) {
			t.Fatalf("second call = %v", err)
		}
		tx.Rollback()
		check("sipcar_pinhole_allocations_failed_total", map[string]string{"range": "media", "reason": "call_limit"}, 1)
		tx = m.Begin("c", netip.Addr{})
		tx.Media(MediaRequest{From: Outside, Index: 0, RTP: ap("203.0.113.2:4000")})
		if _, err := tx.Media(MediaRequest{From: Outside, Index: 1, RTP: ap("203.0.113.2:4002")}); !errors.Is(err, ErrNoPorts) {
			t.Fatalf("third pair = %v", err)
		}
		tx.Rollback()
		check("sipcar_pinhole_allocations_failed_total", map[string]string{"range": "media", "reason": "no_ports"}, 1)

		time.Sleep(2 * time.Minute)
		synctest.Wait()
		check("sipcar_pinhole_expirations_total", map[string]string{"reason": "setup"}, 2)
		check("sipcar_pinhole_expirations_total", map[string]string{"reason": "lifetime"}, 1)
		check("sipcar_pinhole_bindings", map[string]string{"type": "sip-rtp"}, 0)
		check("sipcar_pinhole_calls", nil, 0)
		check("sipcar_pinhole_ports", map[string]string{"range": "media", "state": "free"}, 4)

		// A second Map on the same registry is refused, not silently unregistered.
		if _, err := New(Config{Inside: testInside, Public: testPublic, Registerer: reg}); err == nil {
			t.Errorf("second registration accepted")
		}
	})
}
