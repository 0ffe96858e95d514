package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Follower keeps a standby's copy of the records: it reads them all once, then follows the
// replication log. Create it with [Client.NewFollower], run [Follower.Run], ask
// [Follower.Current] whether it could take over, and [Follower.Takeover] when the addresses come.
type Follower struct {
	c   *Client
	log *slog.Logger

	mu      sync.Mutex // guards the following
	records map[string][]byte
	lastID  string    // the log entry the copy holds up to
	lastSeq int64     // its seq
	loaded  bool      // records were read once
	reload  bool      // the copy missed log entries: read every record again
	contact time.Time // when the log was last read to its end
	polled  time.Time // when Redis's seq and owner were last read
	owner   string    // the active's id, as the owner key said when last read
	err     error     // why the last read failed; nil after a success
	done    bool      // taken over: Run returns
}

// readBlock is how long one read of the log waits for news.
const readBlock = 100 * time.Millisecond

// readCount is how many log entries one read takes.
const readCount = 512

// NewFollower returns a follower of c's replica.
func (c *Client) NewFollower() *Follower {
	return &Follower{c: c, log: c.log, records: make(map[string][]byte), lastID: "0-0"}
}

// Run keeps the copy until ctx is done or [Follower.Takeover] took over.
func (f *Follower) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if f.taken() {
			return nil
		}
		// Takeover reads the log beside this loop, without waiting for its blocked read: both
		// apply what they read under f.mu, and what one applied the other skips.
		err := f.step(ctx, readBlock)
		f.c.metrics.up(err == nil)
		f.gauges()
		if err != nil && ctx.Err() == nil {
			f.fail(err)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

func (f *Follower) taken() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.done
}

func (f *Follower) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil || f.err.Error() != err.Error() {
		f.log.Warn("replica: standby cannot follow Redis", "err", err)
	}
	f.err = err
}

// step reads the log once (or every record, when the copy must be read again).
func (f *Follower) step(ctx context.Context, block time.Duration) error {
	f.mu.Lock()
	load := !f.loaded || f.reload
	poll := time.Since(f.polled) >= time.Second
	f.mu.Unlock()
	if load {
		return f.load(ctx)
	}
	if poll {
		if err := f.poll(ctx); err != nil {
			return err
		}
	}
	_, err := f.readLog(ctx, block)
	return err
}

// readLog reads the log after the copy's last entry (waiting up to block for one; negative:
// not at all) and applies what it reads; it returns how many entries that was.
func (f *Follower) readLog(ctx context.Context, block time.Duration) (int, error) {
	f.mu.Lock()
	last := f.lastID
	f.mu.Unlock()
	res, err := f.c.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{f.c.keys.log}, ID: last, Count: readCount, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		f.atEnd()
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the replication log: %w", err)
	}
	n := 0
	for _, s := range res {
		n += len(s.Messages)
		f.apply(s.Messages)
	}
	if n < readCount {
		f.atEnd()
	}
	return n, nil
}

// atEnd notes that the copy holds the whole log as of now.
func (f *Follower) atEnd() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.reload {
		f.contact = time.Now()
		f.err = nil
	}
}

// apply applies log entries in order; an entry that does not follow the copy's last one means
// entries were missed (the log was trimmed, or Redis lost it), and every record is read again.
func (f *Follower) apply(entries []redis.XMessage) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done || f.reload {
		return
	}
	for _, e := range entries {
		if !idAfter(e.ID, f.lastID) {
			continue // applied already, by the other reader
		}
		seq, _ := strconv.ParseInt(str(e.Values["seq"]), 10, 64)
		if seq != f.lastSeq+1 {
			f.log.Warn("replica: the replication log skipped entries (trimmed, or Redis restarted): reading every record again",
				"copy_seq", f.lastSeq, "log_seq", seq)
			f.reload = true
			return
		}
		for k, v := range e.Values {
			switch k {
			case "seq", "term", "!complete":
				continue
			}
			if s := str(v); s == "" {
				delete(f.records, k)
			} else {
				f.records[k] = []byte(s)
			}
		}
		f.lastSeq, f.lastID = seq, e.ID
	}
	f.c.metrics.copy.Set(float64(len(f.records)))
}

// idAfter reports whether stream entry ID a comes after b ("ms-seq").
func idAfter(a, b string) bool {
	am, as := splitID(a)
	bm, bs := splitID(b)
	return am > bm || (am == bm && as > bs)
}

func splitID(id string) (uint64, uint64) {
	ms, seq, _ := strings.Cut(id, "-")
	m, _ := strconv.ParseUint(ms, 10, 64)
	s, _ := strconv.ParseUint(seq, 10, 64)
	return m, s
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// poll reads Redis's seq and owner: a seq below the copy's means Redis lost the log.
func (f *Follower) poll(ctx context.Context) error {
	k := f.c.keys
	pipe := f.c.rdb.Pipeline()
	seqCmd := pipe.Get(ctx, k.seq)
	ownerCmd := pipe.Get(ctx, k.owner)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("read the replica's state: %w", err)
	}
	seq, _ := strconv.ParseInt(seqCmd.Val(), 10, 64)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polled, f.owner = time.Now(), ownerCmd.Val()
	if seq < f.lastSeq {
		f.log.Warn("replica: Redis's log is behind the copy (Redis lost it): reading every record again", "copy_seq", f.lastSeq, "redis_seq", seq)
		f.reload = true
	}
	return nil
}

// errIncomplete: Redis holds part of the active's state only (it is writing all of it again
// after Redis lost it).
var errIncomplete = errors.New("the state in Redis is incomplete: the active is writing it again after Redis lost it")

// load reads every record, and where the log stands.
func (f *Follower) load(ctx context.Context) error {
	k := f.c.keys
	tx := f.c.rdb.TxPipeline()
	epoch := tx.Get(ctx, k.epoch)
	complete := tx.Exists(ctx, k.complete)
	seqCmd := tx.Get(ctx, k.seq)
	lastCmd := tx.XRevRangeN(ctx, k.log, "+", "-", 1)
	owner := tx.Get(ctx, k.owner)
	if _, err := tx.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("read the replica's state: %w", err)
	}
	if epoch.Err() == nil && complete.Val() == 0 {
		return errIncomplete
	}
	seq, _ := strconv.ParseInt(seqCmd.Val(), 10, 64)
	lastID := "0-0"
	if l := lastCmd.Val(); len(l) > 0 {
		lastID = l[0].ID
	}
	records := make(map[string][]byte)
	var names []string
	iter := f.c.rdb.Scan(ctx, 0, k.record+"*", 1000).Iterator()
	for iter.Next(ctx) {
		names = append(names, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("list the records: %w", err)
	}
	for i := 0; i < len(names); i += 500 {
		chunk := names[i:min(i+500, len(names))]
		vals, err := f.c.rdb.MGet(ctx, chunk...).Result()
		if err != nil {
			return fmt.Errorf("read the records: %w", err)
		}
		for j, v := range vals {
			if s, ok := v.(string); ok {
				records[strings.TrimPrefix(chunk[j], k.record)] = []byte(s)
			}
		}
	}
	// Records written since the transaction above are in the log after lastID too: reading it
	// applies them again, in order, ending where Redis is.
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return nil
	}
	f.records, f.lastID, f.lastSeq = records, lastID, seq
	f.loaded, f.reload, f.err, f.owner, f.polled = true, false, nil, owner.Val(), time.Now()
	f.c.metrics.copy.Set(float64(len(records)))
	f.log.Info("replica: standby copy read from Redis", "records", len(records), "seq", seq, "active", owner.Val())
	return nil
}

// ErrStale: the standby's copy is not known to be current, so it does not take over. The error
// says why.
var ErrStale = errors.New("standby copy not current")

// Current returns nil when the copy could take over now: it was read from Redis, has missed
// nothing, and read the log to its end within Config.MaxLag. Otherwise its error (ErrStale)
// says why not.
func (f *Follower) Current() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.currentLocked()
}

func (f *Follower) currentLocked() error {
	why := func(format string, args ...any) error {
		if f.err != nil {
			format += ": %v"
			args = append(args, f.err)
		}
		return fmt.Errorf("%w: "+format, append([]any{ErrStale}, args...)...)
	}
	switch {
	case f.done:
		return nil
	case !f.loaded:
		return why("not read from Redis yet")
	case f.reload:
		return why("missed log entries (seq %d applied); reading every record again", f.lastSeq)
	case f.contact.IsZero():
		return why("the replication log not read yet")
	}
	if lag := time.Since(f.contact); lag > f.c.cfg.MaxLag {
		return why("fell behind: the replication log was last read to its end %v ago (at most %v allowed), seq %d applied",
			lag.Round(time.Millisecond), f.c.cfg.MaxLag, f.lastSeq)
	}
	return nil
}

// Describe says in a line what the copy holds and whether it is current, for /readyz.
func (f *Follower) Describe() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	state := "current"
	if err := f.currentLocked(); err != nil {
		state = err.Error()
	}
	active := f.owner
	if active == "" {
		active = "none"
	}
	return fmt.Sprintf("standby: %s; %d records, seq %d; active: %s", state, len(f.records), f.lastSeq, active)
}

func (f *Follower) gauges() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.currentLocked() == nil {
		f.c.metrics.current.Set(1)
	} else {
		f.c.metrics.current.Set(0)
	}
	if !f.contact.IsZero() {
		f.c.metrics.lag.Set(time.Since(f.contact).Seconds())
	}
}

// Snapshot is what a standby takes over with.
type Snapshot struct {
	// Term is the new active's term, which its [Writer] writes under.
	Term int64
	// Records are the replicated records, by name.
	Records map[string][]byte
	// Seq is the last log entry they hold.
	Seq int64
}

// ErrHeld: another sipcar's lease runs, and this one was asked to take over only if none does.
var ErrHeld = errors.New("another sipcar is active")

// maxTakeoverRounds bounds how often Takeover reads the log again because the active wrote
// meanwhile (an active still alive, its addresses moved by an operator).
const maxTakeoverRounds = 20

// Takeover makes this sipcar the active one: it reads the log to its end, then, in one step in
// Redis, checks that nothing was written since and takes a new term, which fences the old
// active. It returns the copy, complete up to the fence. It refuses (ErrStale, saying why) when
// the copy is not current ([Follower.Current]) or Redis cannot be reached to fence, and with
// exclusive set (an active that starts) while another sipcar's lease runs (ErrHeld). After it
// succeeds, Run returns.
func (f *Follower) Takeover(ctx context.Context, exclusive bool) (Snapshot, error) {
	if err := f.Current(); err != nil {
		return Snapshot{}, err
	}
	k := f.c.keys
	excl := "0"
	if exclusive {
		excl = "1"
	}
	for range maxTakeoverRounds {
		for {
			n, err := f.readLog(ctx, -1)
			if err != nil {
				return Snapshot{}, fmt.Errorf("%w: cannot reach Redis to catch up and fence the active: %w", ErrStale, err)
			}
			f.mu.Lock()
			reload := f.reload
			f.mu.Unlock()
			if reload {
				return Snapshot{}, fmt.Errorf("%w: missed log entries while catching up", ErrStale)
			}
			if n < readCount {
				break
			}
		}
		f.mu.Lock()
		seq := f.lastSeq
		f.mu.Unlock()
		v, err := takeoverScript.Run(ctx, f.c.rdb, []string{k.epoch, k.owner, k.seq, k.complete},
			strconv.FormatInt(seq, 10), f.c.cfg.ID, leaseMillis(f.c.cfg), excl).Result()
		if err != nil {
			return Snapshot{}, fmt.Errorf("%w: cannot reach Redis to fence the active: %w", ErrStale, err)
		}
		status, rest, err := reply(v)
		if err != nil {
			return Snapshot{}, err
		}
		switch status {
		case "ok":
			term, err := strconv.ParseInt(rest[0], 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("takeover: term %q: %w", rest[0], err)
			}
			f.mu.Lock()
			if f.reload || f.lastSeq != seq {
				// Run read the records again meanwhile, from an older state: the fence holds
				// (the term is taken), the copy must catch up once more.
				f.mu.Unlock()
				continue
			}
			f.done = true
			snap := Snapshot{Term: term, Records: maps.Clone(f.records), Seq: f.lastSeq}
			f.mu.Unlock()
			f.c.metrics.term.Set(float64(term))
			f.c.metrics.current.Set(0)
			return snap, nil
		case "behind":
			if redisSeq, _ := strconv.ParseInt(rest[0], 10, 64); redisSeq < seq {
				return Snapshot{}, fmt.Errorf("%w: Redis lost the replicated state (its log is at %d, the copy at %d) and no active wrote it again",
					ErrStale, redisSeq, seq)
			}
			continue // the active wrote meanwhile: read that too
		case "incomplete":
			return Snapshot{}, fmt.Errorf("%w: %v", ErrStale, errIncomplete)
		case "held":
			owner := ""
			if len(rest) > 0 {
				owner = rest[0]
			}
			return Snapshot{}, fmt.Errorf("%w: %s holds the lease", ErrHeld, owner)
		default:
			return Snapshot{}, fmt.Errorf("takeover script: unexpected reply %v", v)
		}
	}
	return Snapshot{}, fmt.Errorf("%w: the active kept writing while the copy caught up", ErrStale)
}
