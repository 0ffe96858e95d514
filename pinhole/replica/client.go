package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Defaults of the zero fields of [Config].
const (
	DefaultPrefix    = "sipcar"
	DefaultBatch     = 50 * time.Millisecond
	DefaultMaxLag    = 2 * time.Second
	DefaultHeartbeat = 500 * time.Millisecond
	// DefaultLogLength is how many batches the replication log keeps (about: Redis trims it in
	// whole nodes); a standby further behind reads every record again.
	DefaultLogLength = 10000
	// maxBatchRecords bounds the records of one script call, so that one call stays small
	// however many changed.
	maxBatchRecords = 256
)

// Config configures a [Client].
type Config struct {
	// URL is the Redis server: redis://[user:password@]host:port[/db] (rediss:// for TLS). With
	// a master_name parameter it names Sentinels instead, which tell where the master is:
	// redis://sentinel1:26379?master_name=mymaster&addr=sentinel2:26379.
	URL string
	// Prefix starts every key (in a Cluster hash tag), so that sipcar pairs can share a Redis.
	Prefix string
	// ID names this sipcar in the owner key and the logs (default host name and pid).
	ID string
	// Batch is how long changes gather before they are written (default 50 ms).
	Batch time.Duration
	// MaxLag is how long a standby may go without reading the replication log to its end and
	// still take over (default 2 s).
	MaxLag time.Duration
	// Heartbeat is how often an active that has nothing to write refreshes its lease, which
	// lasts three heartbeats (default 500 ms).
	Heartbeat time.Duration
	// LogLength bounds the replication log (default DefaultLogLength).
	LogLength int64

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Batch <= 0 {
		c.Batch = DefaultBatch
	}
	if c.MaxLag <= 0 {
		c.MaxLag = DefaultMaxLag
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.LogLength <= 0 {
		c.LogLength = DefaultLogLength
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Client is a connection to the Redis that holds the replica: what a [Writer] and a [Follower]
// share. Create it with [Open]; it connects when first used.
type Client struct {
	cfg     Config
	log     *slog.Logger
	rdb     redis.UniversalClient
	keys    keys
	metrics *metrics
}

// keys are the names of the replica's keys in Redis.
type keys struct {
	epoch, owner, seq, log, complete string
	record                           string // + the record's name
}

func newKeys(prefix string) keys {
	p := "{" + prefix + "}:"
	return keys{epoch: p + "epoch", owner: p + "owner", seq: p + "seq", log: p + "log", complete: p + "complete", record: p + "r:"}
}

// Open checks cfg and returns a client of its Redis (or of its Sentinels' master).
func Open(cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	rdb, err := newRedis(cfg.URL)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Logger, rdb: rdb, keys: newKeys(cfg.Prefix)}
	if c.metrics, err = newMetrics(cfg.Registerer); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("replica metrics: %w", err)
	}
	rdb.AddHook(roundTrips{c.metrics.roundTrips})
	return c, nil
}

// newRedis makes the go-redis client of url: a Sentinel-backed one when it names a master.
func newRedis(raw string) (redis.UniversalClient, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
		return nil, fmt.Errorf("replica Redis URL %q: want redis://host:port or rediss://host:port", RedactURL(raw))
	}
	if u.Query().Has("master_name") {
		o, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return nil, fmt.Errorf("replica Redis URL %q: %w", RedactURL(raw), err)
		}
		// A standby must notice a lost Redis within its lag, and a write must not wait long.
		setTimeouts(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries)
		return redis.NewFailoverClient(o), nil
	}
	o, err := redis.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("replica Redis URL %q: %w", RedactURL(raw), err)
	}
	setTimeouts(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout, &o.MaxRetries)
	return redis.NewClient(o), nil
}

// setTimeouts gives the timeouts the URL left unset values of a second, and retries one.
func setTimeouts(dial, read, write *time.Duration, retries *int) {
	for _, d := range []*time.Duration{dial, read, write} {
		if *d == 0 {
			*d = time.Second
		}
	}
	if *retries == 0 {
		*retries = 1
	}
}

// RedactURL hides a password in a URL written to logs and errors.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

// Close closes the connections.
func (c *Client) Close() error { return c.rdb.Close() }

// ID returns this sipcar's name in the owner key.
func (c *Client) ID() string { return c.cfg.ID }

// Ping reports whether Redis answers.
func (c *Client) Ping(ctx context.Context) error {
	err := c.rdb.Ping(ctx).Err()
	c.metrics.up(err == nil)
	return err
}

// ErrFenced: another sipcar took over (raised the epoch) after this one took its term. The
// fenced one must stop relaying at once.
var ErrFenced = errors.New("fenced: another sipcar took over")

// fencedError says who took over.
type fencedError struct {
	ours, theirs int64
	owner        string
}

func (e *fencedError) Error() string {
	if e.theirs == 0 {
		return fmt.Sprintf("%v: %s holds the lease of the active one", ErrFenced, e.owner)
	}
	return fmt.Sprintf("%v: term %d (%s) supersedes ours, %d", ErrFenced, e.theirs, e.owner, e.ours)
}

func (e *fencedError) Unwrap() error { return ErrFenced }

// roundTrips counts the client's exchanges with Redis (a pipeline is one).
type roundTrips struct{ c prometheus.Counter }

func (h roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.c.Inc()
		return next(ctx, cmd)
	}
}

func (h roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.c.Inc()
		return next(ctx, cmds)
	}
}

// reply reads a script's reply: a status word and its arguments as strings.
func reply(v any) (string, []string, error) {
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		return "", nil, fmt.Errorf("unexpected script reply %v", v)
	}
	out := make([]string, len(list))
	for i, x := range list {
		switch x := x.(type) {
		case string:
			out[i] = x
		case int64:
			out[i] = strconv.FormatInt(x, 10)
		default:
			out[i] = fmt.Sprint(x)
		}
	}
	return out[0], out[1:], nil
}

// CheckURL reports whether raw is a Redis URL [Open] takes, without connecting.
func CheckURL(raw string) error {
	rdb, err := newRedis(raw)
	if err != nil {
		return err
	}
	return rdb.Close()
}
