package policy

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a Policy's counters, namespace "sipcar", subsystem "policy":
//
//	sipcar_policy_hits_total{rule,action,text}         requests each rule decided ("default" for the default)
//	sipcar_policy_rate_limited_total{rule,text}        requests a rate rule refused
//	sipcar_policy_rate_sources{rule,text}              sources a rate rule tracks
//	sipcar_policy_rate_overflow_total{rule,text}       requests that shared a full table's overflow bucket
//	sipcar_policy_rules                                rules in force
//	sipcar_policy_loaded_timestamp_seconds             when they were put in force
//
// The series are read from the rule set in force at each scrape, so the hot path pays an atomic
// add and no label lookup. rule is the rule's number, text its text: a rule that keeps its text
// across a reload keeps its counts, and one that moves gets a new series with them (the text
// label keeps rule="2" from meaning two rules at once).
type collector struct {
	p                                         *Policy
	hits, limited, sources, overflow, n, load *prometheus.Desc
}

func newCollector(p *Policy) *collector {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("sipcar", "policy", name), help, labels, nil)
	}
	return &collector{
		p:        p,
		hits:     desc("hits_total", "Requests each policy rule decided; rule=\"default\" for the default action.", "rule", "action", "text"),
		limited:  desc("rate_limited_total", "Requests a policy rule refused because their source was over the rule's rate.", "rule", "text"),
		sources:  desc("rate_sources", "Sources a policy rate rule is tracking.", "rule", "text"),
		overflow: desc("rate_overflow_total", "Requests from new sources that shared a rate rule's overflow bucket because its table was full.", "rule", "text"),
		n:        desc("rules", "Policy rules in force."),
		load:     desc("loaded_timestamp_seconds", "When the policy rules in force were loaded, in seconds since the epoch."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.hits, c.limited, c.sources, c.overflow, c.n, c.load} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	set := c.p.active.Load()
	for i := range set.list {
		r, st := &set.list[i], set.entries[i].stats
		rule := strconv.Itoa(i + 1)
		ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(st.hits.Load()), rule, r.action.String(), r.text)
		if st.limiter == nil {
			continue
		}
		sources, overflows := st.limiter.stats()
		ch <- prometheus.MustNewConstMetric(c.limited, prometheus.CounterValue, float64(st.limited.Load()), rule, r.text)
		ch <- prometheus.MustNewConstMetric(c.sources, prometheus.GaugeValue, float64(sources), rule, r.text)
		ch <- prometheus.MustNewConstMetric(c.overflow, prometheus.CounterValue, float64(overflows), rule, r.text)
	}
	def := c.p.def.String()
	ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(set.def.stats.hits.Load()), "default", def, def)
	ch <- prometheus.MustNewConstMetric(c.n, prometheus.GaugeValue, float64(len(set.list)))
	ch <- prometheus.MustNewConstMetric(c.load, prometheus.GaugeValue, float64(set.loaded.UnixNano())/1e9)
}
