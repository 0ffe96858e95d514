package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/sipcar/sipcar/pinhole/replica"
)

// replication is sipcar's side of package replica (SIPCAR_REPLICA_REDIS): as a standby it keeps
// a copy of the active one's calls and takes them over when its addresses come to this host (a
// VRRP failover by keepalived, a lease holder moving them) or when told (POST /takeover); as the
// active one it writes its changes.
type replication struct {
	cfg    config
	log    *slog.Logger
	client *replica.Client
	follow *replica.Follower

	stopFollow context.CancelFunc
	followDone chan struct{}
	// requests carries POST /takeover to the standby's loop, which answers on the channel sent.
	requests chan chan error
	standby  atomic.Bool

	mu      sync.Mutex // guards the following
	refused string     // why the last takeover was refused; "" when none was
	logged  time.Time  // when a refusal was last logged
}

// startReplication opens the replica's Redis and starts keeping the standby's copy.
func startReplication(cfg config, log *slog.Logger, reg prometheus.Registerer) (*replication, error) {
	// go-redis logs connection failures through a logger of its own; the replica says what
	// matters, once, so they go to sipcar's log at debug level.
	redis.SetLogger(redisLog{log})
	client, err := replica.Open(replica.Config{URL: cfg.ReplicaRedis, Prefix: cfg.ReplicaPrefix, Batch: cfg.ReplicaBatch,
		MaxLag: cfg.ReplicaMaxLag, Logger: log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	rp := &replication{cfg: cfg, log: log, client: client, follow: client.NewFollower(), stopFollow: cancel,
		followDone: make(chan struct{}), requests: make(chan chan error)}
	rp.standby.Store(true)
	go func() {
		defer close(rp.followDone)
		_ = rp.follow.Run(ctx)
	}()
	return rp, nil
}

// close stops the copy and closes the connections.
func (rp *replication) close() {
	rp.stopFollow()
	<-rp.followDone
	rp.client.Close()
}

// startGrace is how long an active that starts waits for the copy of Redis before it starts
// without the calls there (Redis unreachable).
const startGrace = 5 * time.Second

// await returns the snapshot this sipcar takes over with, once it is the active one: at once for
// the active role (unless another sipcar is), when its addresses are on this host (or it is told
// to) for a standby. cold is set when the active starts without a snapshot because Redis could
// not be read: it claims a term once Redis answers. It returns ctx's error when ctx ends first.
func (rp *replication) await(ctx context.Context, own []netip.Addr) (snap replica.Snapshot, cold bool, err error) {
	defer rp.standby.Store(false)
	if rp.cfg.ReplicaRole == "active" {
		deadline := time.Now().Add(startGrace)
		for rp.follow.Current() != nil && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		if err := ctx.Err(); err != nil {
			return snap, false, err
		}
		if err := rp.follow.Current(); err != nil {
			rp.log.Error("replica: Redis cannot be read at start: starting with no calls restored; replication is degraded until Redis answers",
				"redis", replica.RedactURL(rp.cfg.ReplicaRedis), "why", err)
			return snap, true, nil
		}
		snap, err := rp.follow.Takeover(ctx, true)
		switch {
		case err == nil:
			return snap, false, nil
		case errors.Is(err, replica.ErrHeld):
			rp.log.Warn("replica: another sipcar is active: this one waits as a standby", "why", err)
		default:
			rp.log.Error("replica: the calls in Redis cannot be taken over at start: starting with none; replication is degraded until Redis answers", "why", err)
			return replica.Snapshot{}, true, nil
		}
	}
	rp.log.Info("replica: standby: keeping a copy of the active sipcar's calls; taking over when these addresses come to this host",
		"addresses", own)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var reply chan error
		select {
		case <-ctx.Done():
			return snap, false, ctx.Err()
		case reply = <-rp.requests:
		case <-tick.C:
			if !allLocal(own) {
				continue
			}
		}
		t0 := time.Now()
		snap, err := rp.follow.Takeover(ctx, false)
		if reply != nil {
			reply <- err
		}
		if err == nil {
			rp.log.Info("replica: taking over", "term", snap.Term, "records", len(snap.Records), "seq", snap.Seq,
				"took", time.Since(t0).Round(time.Microsecond))
			return snap, false, nil
		}
		rp.refuse(err)
	}
}

// refuse notes why a takeover was refused and says it in the log: at once when the reason is
// new, else every few seconds.
func (rp *replication) refuse(err error) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	why := err.Error()
	if why != rp.refused || time.Since(rp.logged) > 5*time.Second {
		rp.log.Error("replica: this standby refuses to take over", "why", why)
		rp.logged = time.Now()
	}
	rp.refused = why
}

// ready answers /readyz for the standby: ready (for keepalived: fit to become the active one)
// while its copy is current.
func (rp *replication) ready() (bool, string) {
	desc := rp.follow.Describe()
	if err := rp.follow.Current(); err != nil {
		return false, desc
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.refused != "" {
		desc += "; last takeover refused: " + rp.refused
	}
	return true, desc
}

// takeoverRequest asks the standby to take over now (POST /takeover).
func (rp *replication) takeoverRequest(ctx context.Context) error {
	if !rp.standby.Load() {
		return errors.New("not a standby")
	}
	reply := make(chan error, 1)
	select {
	case rp.requests <- reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// standbyHandler serves the admin endpoint while sipcar is a standby: /healthz, /readyz (the
// copy's state), /metrics and POST /takeover; the relay's tables are not there yet.
func standbyHandler(rp *replication, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, desc := rp.ready()
		if !ok {
			http.Error(w, "not ready: "+desc, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, desc)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /takeover", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		if err := rp.takeoverRequest(ctx); err != nil {
			http.Error(w, "takeover refused: "+err.Error(), http.StatusConflict)
			return
		}
		fmt.Fprintln(w, "taking over")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "standby: no calls relayed here yet", http.StatusServiceUnavailable)
	})
	return mux
}

// switchHandler serves through a handler that can be replaced while it serves: the standby's,
// then the active relay's.
type switchHandler struct{ h atomic.Pointer[http.Handler] }

func (s *switchHandler) set(h http.Handler) { s.h.Store(&h) }

func (s *switchHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

// ownAddrs are the addresses sipcar binds, which come to a standby's host when it is to take
// over: the inside addresses and the public side's local ones.
func (c config) ownAddrs() []netip.Addr {
	inside, public := c.InsideAddr, c.PublicAddr
	if len(inside) == 0 {
		inside = c.PublicAddr
	}
	if len(c.PublicBindAddr) > 0 {
		public = c.PublicBindAddr
	}
	var out []netip.Addr
	for _, a := range append(append([]netip.Addr(nil), inside...), public...) {
		a = a.Unmap()
		if a.IsValid() && !contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func contains(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

// allLocal reports whether every address is this host's.
func allLocal(addrs []netip.Addr) bool {
	for _, a := range addrs {
		if !isLocal(a) {
			return false
		}
	}
	return len(addrs) > 0
}

// redisLog is go-redis's logger, sent to sipcar's at debug level.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.Debug("redis: " + fmt.Sprintf(format, v...))
}
