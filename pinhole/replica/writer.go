package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Source is the state a [Writer] replicates: records by name (the relay's).
type Source interface {
	// Keys returns the name of every record there is.
	Keys() []string
	// Record returns a record's current value, or false when it is gone. It is called from the
	// writer's goroutine and must be safe beside whatever changes the records.
	Record(name string) ([]byte, bool)
}

// Writer writes the active sipcar's records to Redis: see the package documentation. Create it
// with [Client.NewWriter], hand [Writer.Changed] to the relay, and run [Writer.Run].
type Writer struct {
	c   *Client
	log *slog.Logger

	mu    sync.Mutex // guards dirty
	dirty map[string]struct{}

	term     atomic.Int64
	fenced   atomic.Bool
	degraded atomic.Bool
}

// NewWriter returns a writer under term, as [Follower.Takeover] took it; 0 when the active
// starts without one (Redis could not be reached): the writer then claims a term once Redis
// answers, unless another sipcar holds the lease.
func (c *Client) NewWriter(term int64) *Writer {
	w := &Writer{c: c, log: c.log, dirty: make(map[string]struct{})}
	w.term.Store(term)
	c.metrics.term.Set(float64(term))
	return w
}

// Changed notes that the record named name changed, appeared or went. It never blocks on Redis:
// it is a map insertion under a lock of its own.
func (w *Writer) Changed(name string) {
	w.mu.Lock()
	w.dirty[name] = struct{}{}
	w.mu.Unlock()
}

// Fenced reports whether another sipcar took over from this one.
func (w *Writer) Fenced() bool { return w.fenced.Load() }

// Degraded reports whether the writer cannot write to Redis now.
func (w *Writer) Degraded() bool { return w.degraded.Load() }

// Term returns the writer's term (0 while it has none).
func (w *Writer) Term() int64 { return w.term.Load() }

// take returns the records noted since the last call and forgets them.
func (w *Writer) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.dirty) == 0 {
		return nil
	}
	names := slices.Collect(maps.Keys(w.dirty))
	clear(w.dirty)
	return names
}

// putBack notes again records a failed write did not write.
func (w *Writer) putBack(names []string) {
	w.mu.Lock()
	for _, n := range names {
		w.dirty[n] = struct{}{}
	}
	w.mu.Unlock()
}

func (w *Writer) pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.dirty)
}

// errLost: Redis has no epoch: it lost its data (restarted without persistence, or failed over
// to a replica that had not caught up).
var errLost = errors.New("no epoch in Redis: it lost the replica")

// Run writes changes every Config.Batch until ctx is done, then writes what is pending once
// more (within a second). It returns nil then, or [ErrFenced] (wrapped, saying who) as soon as
// another sipcar took over: the caller must stop relaying. Redis being unreachable is no error:
// the writer logs it once, counts it, and tries again.
func (w *Writer) Run(ctx context.Context, src Source) error {
	cfg := w.c.cfg
	tick := time.NewTicker(cfg.Batch)
	defer tick.Stop()
	full := true // first, Redis is made to hold exactly this sipcar's state
	var retryAt, lastWrite time.Time
	backoff := cfg.Batch
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if !full && w.Term() != 0 {
				if _, err := w.flush(final, src, false); err == nil {
					w.log.Debug("replica: pending changes written at shutdown")
				}
			}
			return nil
		case <-tick.C:
		}
		now := time.Now()
		w.c.metrics.pending.Set(float64(w.pending()))
		if now.Before(retryAt) {
			continue
		}
		var err error
		wrote := true
		if w.Term() == 0 {
			err = w.claim(ctx)
		}
		if err == nil && full {
			err = w.writeAll(ctx, src)
			if err == nil {
				full = false
			}
		} else if err == nil {
			wrote, err = w.flush(ctx, src, now.Sub(lastWrite) >= cfg.Heartbeat)
		}
		if errors.Is(err, errLost) {
			if err = w.reclaim(ctx); err == nil {
				w.log.Warn("replica: Redis had lost the replicated state (restarted without persistence?): writing it all again",
					"term", w.Term())
				if err = w.writeAll(ctx, src); err == nil {
					full = false
				} else {
					full = true
				}
			}
		}
		switch {
		case err == nil:
			if wrote {
				lastWrite = now // every write refreshes the lease
			}
			backoff = cfg.Batch
			if w.degraded.Swap(false) {
				w.log.Info("replica: Redis reachable again: replication resumed", "term", w.Term())
				w.c.metrics.degraded.Set(0)
			}
			w.c.metrics.up(true)
		case errors.Is(err, ErrFenced):
			w.fenced.Store(true)
			w.c.metrics.writes.WithLabelValues("fenced").Inc()
			w.log.Error("replica: "+err.Error()+": this sipcar stops relaying, so that no call has two live copies", "term", w.Term())
			return err
		case ctx.Err() != nil:
		default:
			w.c.metrics.up(false)
			if !w.degraded.Swap(true) {
				w.log.Error("replica: Redis unreachable: replication degraded; calls go on without it, and the changes are written when Redis is back",
					"redis", RedactURL(cfg.URL), "err", err)
				w.c.metrics.degraded.Set(1)
			}
			retryAt = now.Add(backoff)
			backoff = min(2*backoff, time.Second)
		}
	}
}

// record is a record to write: its name and value ("" deletes it).
type record struct {
	name  string
	value []byte
}

// flush writes the records noted since the last flush, or, when there are none and beat is
// set, refreshes the lease. It reports whether it wrote.
func (w *Writer) flush(ctx context.Context, src Source, beat bool) (bool, error) {
	names := w.take()
	if len(names) == 0 {
		if !beat {
			return false, nil
		}
		return true, w.write(ctx, nil, false)
	}
	slices.Sort(names)
	recs := make([]record, 0, len(names))
	for _, n := range names {
		v, _ := src.Record(n)
		recs = append(recs, record{n, v})
	}
	for i := 0; i < len(recs); i += maxBatchRecords {
		end := min(i+maxBatchRecords, len(recs))
		if err := w.write(ctx, recs[i:end], false); err != nil {
			w.putBack(names[i:])
			return true, err
		}
	}
	return true, nil
}

// writeAll makes Redis hold exactly the source's records: every record set, every other record
// Redis holds deleted, and the state marked complete.
func (w *Writer) writeAll(ctx context.Context, src Source) error {
	w.take() // the records read below are at least as new as what these name
	have, err := w.recordNames(ctx)
	if err != nil {
		return err
	}
	var recs []record
	for _, n := range src.Keys() {
		if v, ok := src.Record(n); ok {
			recs = append(recs, record{n, v})
			delete(have, n)
		}
	}
	for n := range have {
		recs = append(recs, record{name: n})
	}
	for i := 0; ; i += maxBatchRecords {
		end := min(i+maxBatchRecords, len(recs))
		if err := w.write(ctx, recs[i:end], end == len(recs)); err != nil {
			return err
		}
		if end == len(recs) {
			break
		}
	}
	w.log.Info("replica: Redis holds this sipcar's whole state", "term", w.Term(), "records", len(recs)-len(have),
		"stale_deleted", len(have))
	return nil
}

// recordNames returns the names of the records Redis holds.
func (w *Writer) recordNames(ctx context.Context) (map[string]bool, error) {
	names := make(map[string]bool)
	prefix := w.c.keys.record
	iter := w.c.rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		names[strings.TrimPrefix(iter.Val(), prefix)] = true
	}
	return names, iter.Err()
}

// write runs the write script for recs (none: a heartbeat), marking the state complete when
// complete is set.
func (w *Writer) write(ctx context.Context, recs []record, complete bool) error {
	k := w.c.keys
	term := strconv.FormatInt(w.Term(), 10)
	keys := make([]string, 0, 5+len(recs))
	keys = append(keys, k.epoch, k.owner, k.seq, k.log, k.complete)
	mark := ""
	if complete {
		mark = "complete"
	}
	args := make([]any, 0, 5+2*len(recs))
	args = append(args, term, w.c.cfg.ID, leaseMillis(w.c.cfg), w.c.cfg.LogLength, mark)
	for _, r := range recs {
		keys = append(keys, k.record+r.name)
		args = append(args, r.name, r.value)
	}
	v, err := writeScript.Run(ctx, w.c.rdb, keys, args...).Result()
	if err != nil {
		w.c.metrics.writes.WithLabelValues("error").Inc()
		return fmt.Errorf("write %d records: %w", len(recs), err)
	}
	status, rest, err := reply(v)
	if err != nil {
		return err
	}
	switch status {
	case "ok":
		w.c.metrics.writes.WithLabelValues("ok").Inc()
		for _, r := range recs {
			if len(r.value) == 0 {
				w.c.metrics.del.Inc()
			} else {
				w.c.metrics.set.Inc()
			}
		}
		return nil
	case "lost":
		w.c.metrics.writes.WithLabelValues("lost").Inc()
		w.putBackRecords(recs)
		return errLost
	case "fenced":
		w.putBackRecords(recs)
		return fenced(w.Term(), rest)
	}
	return fmt.Errorf("write script: unexpected reply %v", v)
}

func (w *Writer) putBackRecords(recs []record) {
	names := make([]string, len(recs))
	for i, r := range recs {
		names[i] = r.name
	}
	w.putBack(names)
}

// fenced makes the error of a fenced term from a script's {epoch, owner}.
func fenced(ours int64, rest []string) error {
	e := &fencedError{ours: ours}
	if len(rest) > 0 {
		e.theirs, _ = strconv.ParseInt(rest[0], 10, 64)
	}
	if len(rest) > 1 {
		e.owner = rest[1]
	}
	return e
}

// reclaim takes the writer's term again in a Redis that lost it.
func (w *Writer) reclaim(ctx context.Context) error {
	k := w.c.keys
	v, err := reclaimScript.Run(ctx, w.c.rdb, []string{k.epoch, k.owner, k.complete},
		strconv.FormatInt(w.Term(), 10), w.c.cfg.ID, leaseMillis(w.c.cfg)).Result()
	if err != nil {
		return fmt.Errorf("reclaim term %d: %w", w.Term(), err)
	}
	status, rest, err := reply(v)
	if err != nil {
		return err
	}
	if status == "fenced" {
		return fenced(w.Term(), rest)
	}
	return nil
}

// claim takes a term for an active that started without one.
func (w *Writer) claim(ctx context.Context) error {
	k := w.c.keys
	v, err := claimScript.Run(ctx, w.c.rdb, []string{k.epoch, k.owner, k.complete}, w.c.cfg.ID, leaseMillis(w.c.cfg)).Result()
	if err != nil {
		return fmt.Errorf("claim a term: %w", err)
	}
	status, rest, err := reply(v)
	if err != nil {
		return err
	}
	switch status {
	case "ok":
		term, err := strconv.ParseInt(rest[0], 10, 64)
		if err != nil {
			return fmt.Errorf("claim a term: %q: %w", rest[0], err)
		}
		w.term.Store(term)
		w.c.metrics.term.Set(float64(term))
		w.log.Info("replica: this sipcar is the active one", "term", term)
		return nil
	case "held":
		owner := ""
		if len(rest) > 0 {
			owner = rest[0]
		}
		return &fencedError{owner: owner}
	}
	return fmt.Errorf("claim script: unexpected reply %v", v)
}

// leaseMillis is how long the owner key lives unless refreshed: three heartbeats.
func leaseMillis(cfg Config) int64 { return (3 * cfg.Heartbeat).Milliseconds() }
