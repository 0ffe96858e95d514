package policy

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Snapshot is the policy's rules and counters at one instant, for the admin endpoint (as JSON)
// and for `sipcar show policy` ([Snapshot.Format]). Times are UTC (RFC 3339 in JSON).
type Snapshot struct {
	Time    time.Time   `json:"time"`
	Loaded  time.Time   `json:"loaded"` // when the rules were put in force
	Rules   []RuleStats `json:"rules"`
	Default RuleStats   `json:"default"`
}

// RuleStats is one rule of a [Snapshot] with its counters.
type RuleStats struct {
	Rule   int    `json:"rule"` // from 1; 0 for the default
	Text   string `json:"text"` // the rule as written; the default's is its action
	Action Action `json:"action"`
	Hits   uint64 `json:"hits"`
	// LastHit is null when the rule never matched.
	LastHit *time.Time `json:"last_hit"`
	Rate    *RateStats `json:"rate,omitempty"`
}

// RateStats are the counters of a rule's rate.
type RateStats struct {
	PerSecond   float64 `json:"per_second"`
	Burst       int     `json:"burst"`
	RateLimited uint64  `json:"rate_limited"` // requests refused for being over the rate
	Sources     int     `json:"sources"`      // sources tracked now
	Overflow    uint64  `json:"overflow"`     // requests that shared the full table's overflow bucket
}

// Snapshot returns the rules in force and their counters.
func (p *Policy) Snapshot() Snapshot {
	set := p.active.Load()
	s := Snapshot{
		Time:    p.timeOf(p.now()).UTC(),
		Loaded:  set.loaded.UTC(),
		Rules:   make([]RuleStats, len(set.list)),
		Default: p.ruleStats(0, p.def.String(), p.def, set.def.stats),
	}
	for i := range set.list {
		r := &set.list[i]
		rs := p.ruleStats(i+1, r.text, r.action, set.entries[i].stats)
		if l := set.entries[i].stats.limiter; l != nil {
			sources, overflow := l.stats()
			rs.Rate = &RateStats{
				PerSecond:   r.perSecond,
				Burst:       r.burst,
				RateLimited: set.entries[i].stats.limited.Load(),
				Sources:     sources,
				Overflow:    overflow,
			}
		}
		s.Rules[i] = rs
	}
	return s
}

func (p *Policy) ruleStats(n int, text string, a Action, st *stats) RuleStats {
	rs := RuleStats{Rule: n, Text: text, Action: a, Hits: st.hits.Load()}
	if last := st.lastHit.Load(); last != 0 {
		t := p.timeOf(last - 1).UTC()
		rs.LastHit = &t
	}
	return rs
}

// Format writes the snapshot as text in the firewall vendors' style, one line per rule and one
// for the default, times in UTC:
//
//	rule 1: permit src=198.18.0.0/24 method=INVITE,REGISTER, hits 120, last hit 2026-11-22 04:10:03
//	rule 2: permit method=REGISTER rate=5/s burst=10, hits 40, last hit 2026-11-22 04:10:01, rate-limited 3, sources 2, overflow 0
//	default: deny, hits 7, last hit never
func (s Snapshot) Format(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, r := range s.Rules {
		writeRule(bw, "rule "+strconv.Itoa(r.Rule), r)
	}
	writeRule(bw, "default", s.Default)
	return bw.Flush()
}

func writeRule(w *bufio.Writer, name string, r RuleStats) {
	last := "never"
	if r.LastHit != nil {
		last = r.LastHit.UTC().Format(time.DateTime)
	}
	fmt.Fprintf(w, "%s: %s, hits %d, last hit %s", name, r.Text, r.Hits, last)
	if r.Rate != nil {
		fmt.Fprintf(w, ", rate-limited %d, sources %d, overflow %d", r.Rate.RateLimited, r.Rate.Sources, r.Rate.Overflow)
	}
	w.WriteByte('\n')
}

// Format writes [Policy.Snapshot] as text; see [Snapshot.Format].
func (p *Policy) Format(w io.Writer) error { return p.Snapshot().Format(w) }
