package policy

import (
	"strings"
	"testing"
	"testing/synctest"

	"github.com/prometheus/client_golang/prometheus"
)

// series returns every sample of name as "label=value,...: value" lines.
func series(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue()
			if g := m.GetGauge(); g != nil {
				v = g.GetValue()
			}
			out[strings.Join(labels, ",")] = v
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := prometheus.NewRegistry()
		p := mustNew(t, mustParse(t, "permit method=REGISTER rate=1/s burst=1; deny src=203.0.113.0/24"), Config{Default: Permit, Registerer: reg, MaxSources: 1})
		p.Evaluate(rq(t, "method=REGISTER initial"))
		p.Evaluate(rq(t, "method=REGISTER initial"))
		p.Evaluate(rq(t, "method=REGISTER initial src=198.18.0.8")) // table full: overflow bucket
		p.Evaluate(rq(t, "src=203.0.113.1"))
		p.Evaluate(rq(t, "src=198.51.100.1"))
		p.Evaluate(rq(t, "src=198.51.100.2"))

		check := func(name string, want map[string]float64) {
			t.Helper()
			got := series(t, reg, name)
			if len(got) != len(want) {
				t.Errorf("%s: %v, want %v", name, got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s{%s} = %v, want %v", name, k, got[k], v)
				}
			}
		}
		check("sipcar_policy_hits_total", map[string]float64{
			"action=permit,rule=1,text=permit method=REGISTER rate=1/s burst=1": 3,
			"action=deny,rule=2,text=deny src=203.0.113.0/24":                   1,
			"action=permit,rule=default,text=permit":                            2,
		})
		check("sipcar_policy_rate_limited_total", map[string]float64{"rule=1,text=permit method=REGISTER rate=1/s burst=1": 1})
		check("sipcar_policy_rate_sources", map[string]float64{"rule=1,text=permit method=REGISTER rate=1/s burst=1": 1})
		check("sipcar_policy_rate_overflow_total", map[string]float64{"rule=1,text=permit method=REGISTER rate=1/s burst=1": 1})
		check("sipcar_policy_rules", map[string]float64{"": 2})
		check("sipcar_policy_loaded_timestamp_seconds", map[string]float64{"": 946684800})

		// After a reload the moved rule keeps its count under its new number.
		p.Swap(mustParse(t, "deny method=OPTIONS; deny src=203.0.113.0/24"))
		check("sipcar_policy_hits_total", map[string]float64{
			"action=deny,rule=1,text=deny method=OPTIONS":     0,
			"action=deny,rule=2,text=deny src=203.0.113.0/24": 1,
			"action=permit,rule=default,text=permit":          2,
		})
		check("sipcar_policy_rate_limited_total", nil)

		if _, err := New(nil, Config{Default: Deny, Registerer: reg}); err == nil {
			t.Error("second policy on the same registry: no error")
		}
	})
}
