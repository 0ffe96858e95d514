package policy

import (
	"fmt"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestEvaluate runs requests through one policy: first match wins, the default decides the
// rest, and each decision carries what the relay answers with.
func TestEvaluate(t *testing.T) {
	rules := mustParse(t, `
		permit src=198.18.0.0/24 method=INVITE,REGISTER
		deny src=198.18.0.0/24 dst=*.evil.example
		deny method=OPTIONS silent
		permit src=203.0.113.0/24 dst=upstream transport=tls
		deny src=203.0.113.0/24`)
	const (
		rule2 = `399 sipcar "denied by policy rule 2: deny src=198.18.0.0/24 dst=*.evil.example"`
		rule5 = `399 sipcar "denied by policy rule 5: deny src=203.0.113.0/24"`
		deflt = `399 sipcar "denied by policy default: deny"`
	)
	tests := []struct {
		req    string
		want   Decision
		status int
	}{
		{"method=INVITE", Decision{Action: Permit, Rule: 1, Text: "permit src=198.18.0.0/24 method=INVITE,REGISTER"}, 0},
		{"method=REGISTER host=x.evil.example", Decision{Action: Permit, Rule: 1, Text: "permit src=198.18.0.0/24 method=INVITE,REGISTER"}, 0},
		{"method=MESSAGE host=x.evil.example", Decision{Action: Deny, Rule: 2, Text: "deny src=198.18.0.0/24 dst=*.evil.example", Warning: rule2}, 403},
		{"method=ACK host=x.evil.example", Decision{Action: Deny, Silent: true, Rule: 2, Text: "deny src=198.18.0.0/24 dst=*.evil.example", Warning: rule2}, 0},
		{"method=OPTIONS src=198.51.100.9", Decision{Action: Deny, Silent: true, Rule: 3, Text: "deny method=OPTIONS silent", Warning: `399 sipcar "denied by policy rule 3: deny method=OPTIONS silent"`}, 0},
		{"src=203.0.113.5 upstream transport=TLS", Decision{Action: Permit, Rule: 4, Text: "permit src=203.0.113.0/24 dst=upstream transport=tls"}, 0},
		{"src=203.0.113.5 upstream transport=udp", Decision{Action: Deny, Rule: 5, Text: "deny src=203.0.113.0/24", Warning: rule5}, 403},
		{"src=203.0.113.5 side=inside transport=tls", Decision{Action: Deny, Rule: 5, Text: "deny src=203.0.113.0/24", Warning: rule5}, 403},
		{"src=2001:db8:c::1", Decision{Action: Deny, Text: "deny", Warning: deflt}, 403},
		{"src=2001:db8:c::1 method=ACK", Decision{Action: Deny, Silent: true, Text: "deny", Warning: deflt}, 0},
	}
	p := mustNew(t, rules, Config{Default: Deny})
	for _, tc := range tests {
		t.Run(tc.req, func(t *testing.T) {
			got := p.Evaluate(rq(t, tc.req))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
			if got.Status() != tc.status {
				t.Errorf("status %d, want %d", got.Status(), tc.status)
			}
		})
	}
}

func TestEvaluateDefaultPermit(t *testing.T) {
	p := mustNew(t, mustParse(t, "deny src=203.0.113.0/24"), Config{Default: Permit})
	if got, want := p.Evaluate(rq(t, "")), (Decision{Action: Permit, Text: "permit"}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got := p.Evaluate(rq(t, "src=203.0.113.1")); got.Action != Deny || got.Rule != 1 {
		t.Errorf("got %+v, want rule 1's deny", got)
	}
	empty := mustNew(t, nil, Config{Default: Permit})
	if got := empty.Evaluate(rq(t, "")); got.Action != Permit || got.Rule != 0 {
		t.Errorf("no rules: got %+v, want the default", got)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(nil, Config{}); err == nil || err.Error() != "policy: default action must be permit or deny" {
		t.Errorf("no default: %v", err)
	}
	if _, err := New(nil, Config{Default: Deny, MaxSources: -1}); err == nil {
		t.Error("negative MaxSources: no error")
	}
}

// TestRate checks the token bucket of a rate rule: burst, refill, retry time, per source, and
// that only initial requests count.
func TestRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := mustNew(t, mustParse(t, "permit method=REGISTER,INVITE rate=2/s burst=3; permit"), Config{Default: Deny})
		reg := "method=REGISTER initial"
		for i := range 3 {
			if d := p.Evaluate(rq(t, reg)); d.Action != Permit {
				t.Fatalf("register %d within the burst: %+v", i+1, d)
			}
		}
		d := p.Evaluate(rq(t, reg))
		want := Decision{Action: Deny, RateLimited: true, RetryAfter: 500 * time.Millisecond, Rule: 1,
			Text: "permit method=REGISTER,INVITE rate=2/s burst=3", Warning: `399 sipcar "rate limited by policy rule 1: permit method=REGISTER,INVITE rate=2/s burst=3"`}
		if diff := cmp.Diff(want, d); diff != "" {
			t.Fatalf("over the burst (-want +got):\n%s", diff)
		}
		if d.Status() != 503 || d.RetryAfterSeconds() != 1 {
			t.Errorf("status %d retry-after %d, want 503 and 1", d.Status(), d.RetryAfterSeconds())
		}
		// Requests that start nothing pass and take no token.
		if d := p.Evaluate(rq(t, "method=REGISTER")); d.Action != Permit {
			t.Errorf("in-dialog request refused: %+v", d)
		}
		// Another source has its own bucket; the same source on another port does not.
		if d := p.Evaluate(rq(t, reg+" src=198.18.0.8")); d.Action != Permit {
			t.Errorf("other source refused: %+v", d)
		}
		if d := p.Evaluate(rq(t, reg+" src=198.18.0.7:9999")); !d.RateLimited {
			t.Errorf("same source, other port, permitted: %+v", d)
		}

		time.Sleep(400 * time.Millisecond)
		if d := p.Evaluate(rq(t, reg)); !d.RateLimited || d.RetryAfter != 100*time.Millisecond {
			t.Errorf("after 400ms: %+v, want refused for 100ms more", d)
		}
		time.Sleep(100 * time.Millisecond)
		if d := p.Evaluate(rq(t, reg)); d.Action != Permit {
			t.Errorf("after 500ms: %+v, want permitted", d)
		}
		if d := p.Evaluate(rq(t, reg)); !d.RateLimited {
			t.Errorf("second after 500ms: %+v, want refused", d)
		}
		// A full refill gives the whole burst back, never more.
		time.Sleep(time.Hour)
		for i := range 3 {
			if d := p.Evaluate(rq(t, reg)); d.Action != Permit {
				t.Fatalf("register %d after an hour: %+v", i+1, d)
			}
		}
		if d := p.Evaluate(rq(t, reg)); !d.RateLimited {
			t.Errorf("burst+1 after an hour: %+v, want refused", d)
		}
		s := p.Snapshot().Rules[0]
		if s.Rate == nil || s.Rate.RateLimited != 5 || s.Hits != 14 {
			t.Errorf("counters %+v %+v, want 14 hits, 5 rate-limited", s, s.Rate)
		}
	})
}

// TestRateIPv6Source checks that an IPv6 source is its /64: a host cannot reset its bucket by
// taking another address of its prefix.
func TestRateIPv6Source(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := mustNew(t, mustParse(t, "permit rate=1/s burst=1"), Config{Default: Deny})
		if d := p.Evaluate(rq(t, "src=2001:db8:a::1 initial")); d.Action != Permit {
			t.Fatalf("first: %+v", d)
		}
		if d := p.Evaluate(rq(t, "src=2001:db8:a::ffff:2 initial")); !d.RateLimited {
			t.Errorf("same /64: %+v, want refused", d)
		}
		if d := p.Evaluate(rq(t, "src=2001:db8:a:1::1 initial")); d.Action != Permit {
			t.Errorf("other /64: %+v, want permitted", d)
		}
		if d := p.Evaluate(rq(t, "src=::ffff:198.18.0.7 initial")); d.Action != Permit {
			t.Errorf("mapped IPv4: %+v, want permitted", d)
		}
		if d := p.Evaluate(rq(t, "src=198.18.0.7 initial")); !d.RateLimited {
			t.Errorf("IPv4 after its mapped form: %+v, want refused", d)
		}
	})
}

func TestRateSilent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := mustNew(t, mustParse(t, "permit method=INVITE rate=1/m silent"), Config{Default: Deny})
		if d := p.Evaluate(rq(t, "initial")); d.Action != Permit || d.Silent {
			t.Fatalf("first: %+v", d)
		}
		d := p.Evaluate(rq(t, "initial"))
		if !d.RateLimited || !d.Silent || d.Status() != 0 || d.RetryAfter != time.Minute {
			t.Errorf("second: %+v, want dropped silently for a minute", d)
		}
	})
}

// TestRateTableCap sprays sources at a rule whose table holds 4: the table never grows past
// 4, new sources share one overflow bucket, tracked sources keep theirs, and a sweep frees the
// buckets that filled up again.
func TestRateTableCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := mustNew(t, mustParse(t, "permit rate=1/s burst=1"), Config{Default: Deny, MaxSources: 4})
		src := func(i int) string { return fmt.Sprintf("src=203.0.113.%d initial", i) }
		for i := 1; i <= 4; i++ {
			if d := p.Evaluate(rq(t, src(i))); d.Action != Permit {
				t.Fatalf("source %d: %+v", i, d)
			}
		}
		// Table full, no sweep due: source 5 takes the overflow bucket's token, 6 finds none.
		if d := p.Evaluate(rq(t, src(5))); d.Action != Permit {
			t.Errorf("source 5 (overflow): %+v, want permitted", d)
		}
		for i := 6; i <= 50; i++ {
			if d := p.Evaluate(rq(t, src(i))); !d.RateLimited {
				t.Fatalf("source %d (overflow empty): %+v, want refused", i, d)
			}
		}
		if d := p.Evaluate(rq(t, src(1))); !d.RateLimited {
			t.Errorf("source 1 again: %+v, want refused by its own bucket", d)
		}
		rate := p.Snapshot().Rules[0].Rate
		if rate.Sources != 4 || rate.Overflow != 46 {
			t.Errorf("sources %d overflow %d, want 4 and 46", rate.Sources, rate.Overflow)
		}

		// A second later every bucket is full again; the next new source sweeps them away.
		time.Sleep(time.Second)
		if d := p.Evaluate(rq(t, src(7))); d.Action != Permit {
			t.Errorf("source 7 after a second: %+v", d)
		}
		if d := p.Evaluate(rq(t, src(7))); !d.RateLimited {
			t.Errorf("source 7 again: %+v, want refused by its own bucket", d)
		}
		if rate := p.Snapshot().Rules[0].Rate; rate.Sources != 1 {
			t.Errorf("sources after the sweep: %d, want 1", rate.Sources)
		}
	})
}

// TestRateSpray checks memory stays bounded under a spray of addresses much larger than the
// cap, over time, and that the map is rebuilt smaller once the spray stops.
func TestRateSpray(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const maxSources = 2000
		p := mustNew(t, mustParse(t, "permit rate=1/s burst=2"), Config{Default: Deny, MaxSources: maxSources})
		l := p.active.Load().entries[0].stats.limiter
		n := 0
		for range 5 {
			for range 10000 {
				n++
				a := netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
				p.Evaluate(Request{Src: netip.AddrPortFrom(a, 5060), Transport: "udp", Method: "INVITE", Initial: true})
				if sources, _ := l.stats(); sources > maxSources {
					t.Fatalf("%d sources tracked, cap %d", sources, maxSources)
				}
			}
			time.Sleep(300 * time.Millisecond)
		}
		if l.peak < 1024 {
			t.Fatalf("peak %d: the spray did not fill the table", l.peak)
		}
		time.Sleep(time.Minute)
		p.Evaluate(rq(t, "initial"))
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.buckets) != 1 || l.peak != 1 {
			t.Errorf("after the spray: %d buckets, peak %d; want 1 and a rebuilt map", len(l.buckets), l.peak)
		}
	})
}

// TestRequestTime checks that a request's own time, when given, is the one the rate and the
// last hit use.
func TestRequestTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := mustNew(t, mustParse(t, "permit rate=1/s burst=1"), Config{Default: Deny})
		req := rq(t, "initial")
		req.Time = time.Now().Add(time.Hour)
		if d := p.Evaluate(req); d.Action != Permit {
			t.Fatalf("first: %+v", d)
		}
		if d := p.Evaluate(rq(t, "initial")); !d.RateLimited {
			t.Errorf("at the clock's time (an hour before, so no refill): %+v, want refused", d)
		}
		req.Time = req.Time.Add(time.Second)
		if d := p.Evaluate(req); d.Action != Permit {
			t.Errorf("a second after the first: %+v, want permitted", d)
		}
		if got, want := *p.Snapshot().Rules[0].LastHit, req.Time.UTC(); !got.Equal(want) {
			t.Errorf("last hit %v, want %v", got, want)
		}
	})
}
