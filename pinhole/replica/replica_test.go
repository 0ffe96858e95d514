package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The active writes what changes; the standby's copy follows; a takeover fences the active
// (its next write fails with ErrFenced) and hands the standby the copy, complete up to the
// fence; the new active's first write makes Redis hold exactly its state.
func TestWriteFollowTakeover(t *testing.T) {
	rs := startRedis(t)
	var activeLog logBuffer
	active := openClient(t, Config{URL: rs.url(), ID: "a", Logger: activeLog.logger()})
	standby := openClient(t, Config{URL: rs.url(), ID: "b"})

	// An active that starts: the standby's copy of an empty Redis, taken over at once.
	fa := active.NewFollower()
	_, faDone := run(t, fa.Run)
	waitFor(t, 5*time.Second, "first follower current", func() (bool, string) { return fa.Current() == nil, fmt.Sprint(fa.Current()) })
	snapA, err := fa.Takeover(context.Background(), true)
	if err != nil {
		t.Fatalf("Takeover of an empty Redis: %v", err)
	}
	if len(snapA.Records) != 0 || snapA.Term == 0 {
		t.Fatalf("first takeover: %d records, term %d", len(snapA.Records), snapA.Term)
	}
	if err := <-faDone; err != nil {
		t.Errorf("Run after Takeover: %v", err)
	}

	src := &fakeSource{}
	src.set("call:1", "one")
	src.set("sig:1", "binding")
	w := active.NewWriter(snapA.Term)
	src.w = w
	_, wDone := run(t, func(ctx context.Context) error { return w.Run(ctx, src) })

	fb := standby.NewFollower()
	run(t, fb.Run)
	waitFor(t, 5*time.Second, "standby copy", func() (bool, string) { return sameRecords(fb, src.snapshot()) })
	waitFor(t, 5*time.Second, "standby current", func() (bool, string) { return fb.Current() == nil, fmt.Sprint(fb.Current()) })
	if _, err := fb.Takeover(context.Background(), true); !errors.Is(err, ErrHeld) {
		t.Errorf("exclusive takeover while the active's lease runs: %v, want ErrHeld", err)
	}

	// Changes, a record gone, many at once.
	src.set("call:1", "one, answered")
	src.del("sig:1")
	for i := range 600 {
		src.set(fmt.Sprintf("call:many%d", i), strings.Repeat("x", i+1))
	}
	waitFor(t, 5*time.Second, "standby follows", func() (bool, string) { return sameRecords(fb, src.snapshot()) })
	if n, err := active.rdb.Exists(context.Background(), active.keys.record+"sig:1").Result(); err != nil || n != 0 {
		t.Errorf("deleted record still in Redis: %d %v", n, err)
	}

	// The standby takes over (the addresses moved): the active is fenced at its next write.
	src.set("call:last", "written before the fence")
	waitFor(t, 5*time.Second, "last write replicated", func() (bool, string) { return sameRecords(fb, src.snapshot()) })
	snapB, err := fb.Takeover(context.Background(), false)
	if err != nil {
		t.Fatalf("Takeover: %v", err)
	}
	if snapB.Term <= snapA.Term || string(snapB.Records["call:last"]) != "written before the fence" || len(snapB.Records) != 602 {
		t.Errorf("takeover: term %d (old %d), %d records, call:last %q", snapB.Term, snapA.Term, len(snapB.Records), snapB.Records["call:last"])
	}
	src.set("call:after", "the fenced active must not write this")
	select {
	case err := <-wDone:
		if !errors.Is(err, ErrFenced) {
			t.Errorf("old active's Run: %v, want ErrFenced", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the old active was not fenced")
	}
	if !w.Fenced() || !strings.Contains(activeLog.String(), "stops relaying") {
		t.Errorf("fenced writer: Fenced %v, log:\n%s", w.Fenced(), activeLog.String())
	}
	if n, _ := active.rdb.Exists(context.Background(), active.keys.record+"call:after").Result(); n != 0 {
		t.Error("a fenced write landed")
	}

	// The new active writes its own state: what it restored, less what it could not.
	srcB := &fakeSource{}
	for k, v := range snapB.Records {
		if k != "call:many7" {
			srcB.set(k, string(v))
		}
	}
	wb := standby.NewWriter(snapB.Term)
	srcB.w = wb
	run(t, func(ctx context.Context) error { return wb.Run(ctx, srcB) })
	waitFor(t, 5*time.Second, "new active's full write", func() (bool, string) {
		n, err := standby.rdb.Exists(context.Background(), standby.keys.record+"call:many7").Result()
		return err == nil && n == 0, fmt.Sprintf("call:many7 exists: %d %v", n, err)
	})
}

// Redis restarted without persistence while calls go on: the active says once that replication
// is degraded (log and metric), keeps its changes, writes everything again when Redis is back;
// the standby reads its copy again and is current.
func TestRedisRestart(t *testing.T) {
	rs := startRedis(t)
	var activeLog logBuffer
	reg := prometheus.NewRegistry()
	active := openClient(t, Config{URL: rs.url(), ID: "a", Logger: activeLog.logger(), Registerer: reg})
	standby := openClient(t, Config{URL: rs.url(), ID: "b", MaxLag: 500 * time.Millisecond})
	fa := active.NewFollower()
	run(t, fa.Run)
	waitFor(t, 5*time.Second, "follower current", func() (bool, string) { return fa.Current() == nil, fmt.Sprint(fa.Current()) })
	snap, err := fa.Takeover(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{}
	w := active.NewWriter(snap.Term)
	src.w = w
	for i := range 10 {
		src.set(fmt.Sprintf("call:%d", i), "up")
	}
	run(t, func(ctx context.Context) error { return w.Run(ctx, src) })
	fb := standby.NewFollower()
	run(t, fb.Run)
	waitFor(t, 5*time.Second, "standby copy", func() (bool, string) { return sameRecords(fb, src.snapshot()) })
	waitFor(t, 5*time.Second, "standby current", func() (bool, string) { return fb.Current() == nil, fmt.Sprint(fb.Current()) })

	rs.kill()
	for i := range 3 {
		src.set(fmt.Sprintf("call:%d", i), "changed while Redis was down")
	}
	src.del("call:9")
	waitFor(t, 5*time.Second, "degraded", func() (bool, string) {
		return w.Degraded() && testutil.ToFloat64(active.metrics.degraded) == 1, activeLog.String()
	})
	waitFor(t, 5*time.Second, "standby stale", func() (bool, string) { return fb.Current() != nil, "still current" })
	if err := fb.Current(); !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), "fell behind") {
		t.Errorf("standby without Redis: %v; want ErrStale saying it fell behind", err)
	}
	if _, err := fb.Takeover(context.Background(), false); !errors.Is(err, ErrStale) {
		t.Errorf("takeover without Redis: %v, want ErrStale", err)
	}
	rs.start()
	waitFor(t, 10*time.Second, "replication resumed", func() (bool, string) {
		return !w.Degraded() && strings.Contains(activeLog.String(), "writing it all again"), activeLog.String()
	})
	waitFor(t, 10*time.Second, "standby current again", func() (bool, string) {
		if err := fb.Current(); err != nil {
			return false, err.Error()
		}
		return sameRecords(fb, src.snapshot())
	})
	if got := strings.Count(activeLog.String(), "replication degraded"); got != 1 {
		t.Errorf("degraded logged %d times, want once:\n%s", got, activeLog.String())
	}
	if testutil.ToFloat64(active.metrics.degraded) != 0 {
		t.Error("sipcar_replica_degraded still 1")
	}
}

// A standby cut off from Redis falls behind while the active writes on; when the addresses come
// it refuses, saying why, and the active keeps its term.
func TestStaleStandbyRefuses(t *testing.T) {
	rs := startRedis(t)
	active := openClient(t, Config{URL: rs.url(), ID: "a"})
	fa := active.NewFollower()
	run(t, fa.Run)
	waitFor(t, 5*time.Second, "follower current", func() (bool, string) { return fa.Current() == nil, fmt.Sprint(fa.Current()) })
	snap, err := fa.Takeover(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{}
	w := active.NewWriter(snap.Term)
	src.w = w
	_, wDone := run(t, func(ctx context.Context) error { return w.Run(ctx, src) })

	// The standby's Redis is a proxy the test cuts.
	p := startProxy(t, fmt.Sprintf("127.0.0.1:%d", rs.port))
	standby := openClient(t, Config{URL: "redis://" + p.addr(), ID: "b", MaxLag: 300 * time.Millisecond})
	fb := standby.NewFollower()
	run(t, fb.Run)
	src.set("call:1", "before")
	waitFor(t, 5*time.Second, "standby copy", func() (bool, string) { return sameRecords(fb, src.snapshot()) })
	waitFor(t, 5*time.Second, "standby current", func() (bool, string) { return fb.Current() == nil, fmt.Sprint(fb.Current()) })
	p.cut()
	src.set("call:2", "the standby never sees this")
	waitFor(t, 5*time.Second, "standby stale", func() (bool, string) { return fb.Current() != nil, "still current" })
	_, err = fb.Takeover(context.Background(), false)
	if !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), "fell behind") {
		t.Errorf("takeover of a standby that fell behind: %v; want ErrStale saying it fell behind", err)
	}
	if !strings.Contains(fb.Describe(), "fell behind") {
		t.Errorf("Describe: %s", fb.Describe())
	}
	select {
	case err := <-wDone:
		t.Fatalf("the active stopped: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if w.Fenced() {
		t.Error("the active was fenced by a standby that refused")
	}
}

// A Sentinel URL: the client asks the Sentinel where the master is, and replication works
// through it.
func TestSentinelURL(t *testing.T) {
	rs := startRedis(t)
	sentinel := startSentinel(t, rs.port)
	url := fmt.Sprintf("redis://127.0.0.1:%d?master_name=mymaster", sentinel)
	active := openClient(t, Config{URL: url, ID: "a"})
	fa := active.NewFollower()
	run(t, fa.Run)
	waitFor(t, 10*time.Second, "follower through the Sentinel", func() (bool, string) { return fa.Current() == nil, fmt.Sprint(fa.Current()) })
	snap, err := fa.Takeover(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{}
	w := active.NewWriter(snap.Term)
	src.w = w
	src.set("call:1", "through the Sentinel's master")
	run(t, func(ctx context.Context) error { return w.Run(ctx, src) })
	direct := openClient(t, Config{URL: rs.url()})
	waitFor(t, 5*time.Second, "record in the master", func() (bool, string) {
		v, err := direct.rdb.Get(context.Background(), direct.keys.record+"call:1").Result()
		return err == nil && v == "through the Sentinel's master", fmt.Sprint(v, err)
	})
}
