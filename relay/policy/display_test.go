package policy

import (
	"encoding/json"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestFormat checks `sipcar show policy`: one line per rule in the vendors' style, then the
// default, with hits, last hit (UTC) and a rate rule's counters.
func TestFormat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// synctest's clock starts at 2000-01-01 00:00:00 UTC.
		p := mustNew(t, mustParse(t, "permit src=198.18.0.0/24 method=INVITE,REGISTER; permit method=REGISTER rate=5/s burst=2; deny method=OPTIONS silent"),
			Config{Default: Deny})
		time.Sleep(time.Hour + 10*time.Minute + 3*time.Second)
		for range 120 {
			p.Evaluate(rq(t, "method=INVITE"))
		}
		time.Sleep(2 * time.Second)
		for range 3 {
			p.Evaluate(rq(t, "method=REGISTER src=203.0.113.5 initial"))
		}
		p.Evaluate(rq(t, "method=BYE src=203.0.113.5"))
		var b strings.Builder
		if err := p.Format(&b); err != nil {
			t.Fatal(err)
		}
		want := "" +
			"rule 1: permit src=198.18.0.0/24 method=INVITE,REGISTER, hits 120, last hit 2000-01-01 01:10:03\n" +
			"rule 2: permit method=REGISTER rate=5/s burst=2, hits 3, last hit 2000-01-01 01:10:05, rate-limited 1, sources 1, overflow 0\n" +
			"rule 3: deny method=OPTIONS silent, hits 0, last hit never\n" +
			"default: deny, hits 1, last hit 2000-01-01 01:10:05\n"
		if diff := cmp.Diff(want, b.String()); diff != "" {
			t.Errorf("show policy (-want +got):\n%s", diff)
		}
	})
}

// TestSnapshotJSON checks the admin endpoint's form, and that `sipcar show policy` can format
// what it reads back.
func TestSnapshotJSON(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := mustNew(t, mustParse(t, "permit method=REGISTER rate=30/m; deny src=203.0.113.0/24"), Config{Default: Permit})
		time.Sleep(time.Second)
		p.Evaluate(rq(t, "method=REGISTER initial"))
		out, err := json.Marshal(p.Snapshot())
		if err != nil {
			t.Fatal(err)
		}
		want := `{"time":"2000-01-01T00:00:01Z","loaded":"2000-01-01T00:00:00Z","rules":[` +
			`{"rule":1,"text":"permit method=REGISTER rate=30/m","action":"permit","hits":1,"last_hit":"2000-01-01T00:00:01Z",` +
			`"rate":{"per_second":0.5,"burst":1,"rate_limited":0,"sources":1,"overflow":0}},` +
			`{"rule":2,"text":"deny src=203.0.113.0/24","action":"deny","hits":0,"last_hit":null}],` +
			`"default":{"rule":0,"text":"permit","action":"permit","hits":0,"last_hit":null}}`
		if diff := cmp.Diff(want, string(out)); diff != "" {
			t.Errorf("JSON (-want +got):\n%s", diff)
		}
		var back Snapshot
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatal(err)
		}
		var direct, decoded strings.Builder
		p.Format(&direct)
		back.Format(&decoded)
		if direct.String() != decoded.String() {
			t.Errorf("formatted from JSON:\n%s\ndirectly:\n%s", decoded.String(), direct.String())
		}
	})
}
