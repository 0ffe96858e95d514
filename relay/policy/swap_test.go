package policy

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestSwapCarriesCounters reloads a changed rule set: rules whose text is unchanged keep their
// hits and their rate buckets wherever they moved, changed rules start from zero, and the
// numbers in Warning headers follow the new order.
func TestSwapCarriesCounters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := mustNew(t, mustParse(t, "deny src=203.0.113.0/24; permit method=REGISTER rate=1/m; deny method=OPTIONS"), Config{Default: Permit})
		p.Evaluate(rq(t, "src=203.0.113.1"))
		p.Evaluate(rq(t, "src=203.0.113.2"))
		p.Evaluate(rq(t, "method=REGISTER initial"))
		p.Evaluate(rq(t, "method=OPTIONS"))
		p.Evaluate(rq(t, "method=BYE"))

		p.Swap(mustParse(t, "deny method=OPTIONS silent\npermit   method=REGISTER  rate=1/m\ndeny src=203.0.113.0/24"))
		hits := map[string]uint64{}
		for _, r := range p.Snapshot().Rules {
			hits[r.Text] = r.Hits
		}
		want := map[string]uint64{"deny method=OPTIONS silent": 0, "permit method=REGISTER rate=1/m": 1, "deny src=203.0.113.0/24": 2}
		for text, n := range want {
			if hits[text] != n {
				t.Errorf("%q: %d hits, want %d", text, hits[text], n)
			}
		}
		if got := p.Snapshot().Default.Hits; got != 1 {
			t.Errorf("default: %d hits, want 1 (kept across reloads)", got)
		}
		// The register bucket came along: the source is still over its rate.
		if d := p.Evaluate(rq(t, "method=REGISTER initial")); !d.RateLimited || d.Rule != 2 {
			t.Errorf("register after reload: %+v, want refused by rule 2", d)
		}
		if d := p.Evaluate(rq(t, "src=203.0.113.1")); d.Warning != `399 sipcar "denied by policy rule 3: deny src=203.0.113.0/24"` {
			t.Errorf("warning after the move: %q", d.Warning)
		}
		// A changed rate is a new rule with a new bucket.
		p.Swap(mustParse(t, "permit method=REGISTER rate=2/m"))
		if d := p.Evaluate(rq(t, "method=REGISTER initial")); d.Action != Permit {
			t.Errorf("register under a new rate: %+v, want permitted", d)
		}
		if r := p.Snapshot().Rules[0]; r.Hits != 1 {
			t.Errorf("new rule: %d hits, want 1", r.Hits)
		}
	})
}

// TestSwapDuplicateTexts pairs rules of the same text in order.
func TestSwapDuplicateTexts(t *testing.T) {
	p := mustNew(t, mustParse(t, "deny method=BYE; deny method=BYE"), Config{Default: Permit})
	p.Evaluate(rq(t, "method=BYE"))
	p.Swap(mustParse(t, "deny method=BYE; permit; deny method=BYE"))
	s := p.Snapshot()
	if s.Rules[0].Hits != 1 || s.Rules[2].Hits != 0 {
		t.Errorf("hits %d, %d; want 1 (the first) and 0", s.Rules[0].Hits, s.Rules[2].Hits)
	}
}

func TestSwapNil(t *testing.T) {
	p := mustNew(t, mustParse(t, "permit"), Config{Default: Deny})
	p.Swap(nil)
	if d := p.Evaluate(rq(t, "")); d.Action != Deny || d.Rule != 0 {
		t.Errorf("after Swap(nil): %+v, want the default", d)
	}
	if p.Rules().Len() != 0 {
		t.Errorf("Rules().Len() = %d", p.Rules().Len())
	}
}

// TestReloadFile reloads from a file: a good file replaces the rules, a bad one keeps them and
// says what is wrong.
func TestReloadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy")
	write := func(text string) {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("deny src=203.0.113.0/24\n")
	rules, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	p := mustNew(t, rules, Config{Default: Permit})

	write("permit src=198.18.0.0/24\ndeny src=any\n")
	if err := p.ReloadFile(path); err != nil {
		t.Fatal(err)
	}
	if d := p.Evaluate(rq(t, "src=198.51.100.1")); d.Rule != 2 {
		t.Errorf("after reload: %+v, want rule 2", d)
	}

	write("permit src=198.18.0.0/24\ndeny src=anyy\n")
	err = p.ReloadFile(path)
	if err == nil || !strings.HasPrefix(err.Error(), path+`:2: policy rule 2 "deny src=anyy": src: `) {
		t.Errorf("bad reload: %v", err)
	}
	if got := p.Rules().String(); got != "permit src=198.18.0.0/24; deny src=any" {
		t.Errorf("rules after a bad reload: %q, want the old ones", got)
	}
	if err := p.ReloadFile(path + ".missing"); err == nil {
		t.Error("reload of a missing file: no error")
	}
}

// TestSwapConcurrent evaluates while rule sets are swapped: every decision comes wholly from one
// rule set, and the race detector sees the counters.
func TestSwapConcurrent(t *testing.T) {
	a := mustParse(t, "deny method=INVITE; permit rate=1000000/s")
	b := mustParse(t, "permit method=INVITE rate=1000000/s; deny")
	p := mustNew(t, a, Config{Default: Deny})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			req := rq(t, "initial")
			if g%2 == 1 {
				req.Method = "BYE"
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				d := p.Evaluate(req)
				ok := false
				switch d.Text {
				case "deny method=INVITE", "deny":
					ok = d.Action == Deny
				case "permit rate=1000000/s", "permit method=INVITE rate=1000000/s":
					ok = d.Action == Permit
				}
				if !ok {
					t.Errorf("inconsistent decision %+v", d)
					return
				}
			}
		})
	}
	for i := range 200 {
		if i%2 == 0 {
			p.Swap(b)
		} else {
			p.Swap(a)
		}
		p.Snapshot()
	}
	close(stop)
	wg.Wait()
}

// TestClockBackwards checks that a clock that steps back never adds tokens or panics.
func TestClockBackwards(t *testing.T) {
	now := time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)
	p := mustNew(t, mustParse(t, "permit rate=1/s burst=1"), Config{Default: Deny, Clock: func() time.Time { return now }})
	if d := p.Evaluate(rq(t, "initial")); d.Action != Permit {
		t.Fatalf("first: %+v", d)
	}
	now = now.Add(-time.Hour)
	if d := p.Evaluate(rq(t, "initial")); !d.RateLimited {
		t.Errorf("after the clock stepped back: %+v, want refused", d)
	}
}
