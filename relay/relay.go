package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// Relay terminates SIP on both of sipcar's sides and forwards every message, translated, to its
// next hop. Create it with [New], start it with [Relay.Run].
//
// It is the hub of parts that each own their state under a lock of their own: the transport
// (sockets and connections), the call table (calls, their forks, crossings and media streams),
// the NAT state (what senders behind a NAT wrote, which transport reaches a binding), the
// transactions sipcar forwarded, and the gates that cap what one source may cost. A message goes
// through them along the pipeline of pipeline.go.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	m       *pinhole.Map
	media   *mediarelay.Relay
	metrics *metrics
	// mcap exports RTCP and quality reports to the HEP collector; nil without one.
	mcap    *mediaCapture
	tp      *transport
	calls   *callTable
	nat     *natState
	txs     *transactions
	absorb  *ownAnswers
	flood   *floodGate
	replies *replyGate
	rep     *replier
	conns   *connLimits
	diag    *callLog

	ready    atomic.Bool // listeners open and not draining
	draining atomic.Bool
	// fdLimit is the process's descriptor limit (0: unknown), set by Run before the listeners
	// open.
	fdLimit int
}

// New builds a Relay: its server map and media relay, wired to each other. Nothing listens until
// [Relay.Run].
func New(cfg Config) (*Relay, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	r := &Relay{cfg: cfg, log: cfg.Logger, nat: newNATState(), txs: newTransactions(cfg.ResponseTimeout),
		absorb: newOwnAnswers(), replies: newReplyGate(cfg.MaxErrorReplyRate), diag: newCallLog(cfg.CallHistory)}
	r.flood = &floodGate{perAddr: newThrottle(cfg.MaxMessageRate, 2*cfg.MaxMessageRate),
		perPrefix: newThrottle(cfg.MaxPrefixRate, 2*cfg.MaxPrefixRate), bits4: cfg.RatePrefixV4, bits6: cfg.RatePrefixV6}
	if cfg.Mode == Upstream {
		r.flood.exempt = cfg.Upstream.Addr().Unmap()
	}
	r.conns = newConnLimits(cfg.MaxConnections, cfg.MaxConnectionsPerSource, r.flood.exempt)
	var err error
	if r.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	r.rep = newReplier()
	r.tp = newTransport(&r.cfg, r.metrics, r.conns, r.rep)
	r.tp.deliver, r.tp.room, r.tp.bindAddr, r.tp.publicListen = r.handle, r.connectionRoom, r.bindAddr, r.isPublicListen
	if err := r.newMedia(); err != nil {
		return nil, err
	}
	r.calls = newCallTable(r.m, r.media, r.log, r.cfg.Mode == Upstream, r.bindAddr, r.mediaPeer)
	r.calls.diag, r.calls.callsByFamily = r.diag, r.metrics.calls
	if rep := cfg.Replica; rep != nil {
		r.calls.changed = func(key string) { rep.Changed(callRecordPrefix + key) }
	}
	return r, nil
}

// newMedia makes the media relay and the server map, wired to each other and to the transport.
func (r *Relay) newMedia() error {
	cfg := &r.cfg
	mc := cfg.Media
	if cfg.Map.MediaPorts == (pinhole.PortRange{}) {
		cfg.Map.MediaPorts = pinhole.PortRange{First: 20000, Last: 29999}
	}
	mc.PortMin, mc.PortMax = cfg.Map.MediaPorts.First, cfg.Map.MediaPorts.Last
	mc.Events = (*mediaEvents)(r)
	if cfg.Capture != nil && mc.RTCP == nil && mc.Ended == nil {
		r.mcap = newMediaCapture(cfg.Capture)
		mc.RTCP, mc.Ended = r.mcap.rtcp, r.mcap.ended
		if cfg.Registerer != nil {
			if err := cfg.Registerer.Register(r.mcap.dropped); err != nil {
				// Another relay on the same registry (tests): count into its counter.
				var are prometheus.AlreadyRegisteredError
				var c prometheus.Counter
				ok := errors.As(err, &are)
				if ok {
					c, ok = are.ExistingCollector.(prometheus.Counter)
				}
				if !ok {
					return fmt.Errorf("hep rtcp metrics: %w", err)
				}
				r.mcap.dropped = c
			}
		}
	}
	if mc.Logger == nil {
		mc.Logger = cfg.Logger
	}
	var err error
	if r.media, err = mediarelay.New(mc); err != nil {
		return fmt.Errorf("media relay: %w", err)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(mediarelay.NewCollector(r.media)); err != nil {
			r.media.Close()
			return fmt.Errorf("media relay metrics: %w", err)
		}
	}
	pc := cfg.Map
	pc.ReserveMedia = func(network string, a netip.AddrPort) (io.Closer, error) {
		return r.media.Reserve(network, r.bindAddr(a))
	}
	pc.ReserveSignaling = r.tp.reserve
	pc.OnRelease = r.released
	if cfg.Replica != nil {
		pc.OnChange = r.mapChanged
	}
	// The answerer's first packets often overtake its answer: the media relay forwards them
	// through the answer's pair, reserved with the offer.
	pc.ReserveAnswerPair = true
	if pc.Registerer == nil {
		pc.Registerer = cfg.Registerer
	}
	if r.m, err = pinhole.New(pc); err != nil {
		r.media.Close()
		return err
	}
	return nil
}

// Map returns the server map, for display.
func (r *Relay) Map() *pinhole.Map { return r.m }

// Media returns the media relay, for its counters.
func (r *Relay) Media() *mediarelay.Relay { return r.media }

// Run opens the listeners and relays until ctx is done; then it stops taking messages, closes
// every socket and binding, and returns. It returns an error at once if a listener cannot open.
func (r *Relay) Run(ctx context.Context) error {
	r.checkDescriptors()
	if err := r.tp.listen(); err != nil {
		r.shutdown()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	bg.Add(3)
	go func() { defer bg.Done(); r.runTransactions(ctx) }()
	go func() { defer bg.Done(); _ = r.m.Run(ctx) }()
	go func() { defer bg.Done(); _ = r.media.Run(ctx) }()
	if r.mcap != nil {
		bg.Add(1)
		go func() { defer bg.Done(); r.mcap.run(ctx) }()
	}
	r.ready.Store(true)
	r.log.Info("sipcar relaying", "mode", r.cfg.Mode.String(), "udp", r.cfg.ListenUDP, "tcp", r.cfg.ListenTCP,
		"tls", r.cfg.ListenTLS, "media", mediaModeName(r.media))
	<-ctx.Done()
	r.ready.Store(false)
	bg.Wait()
	r.shutdown()
	return nil
}

// checkDescriptors reads the process's descriptor limit, by which TCP and TLS connections are
// held back at run time (connectionRoom), and says at start-up when it cannot cover every port
// of the ranges and the connection cap at once.
func (r *Relay) checkDescriptors() {
	r.fdLimit = r.cfg.DescriptorLimit
	if r.fdLimit == 0 {
		r.fdLimit = descriptorLimit()
	}
	media, signaling := r.m.Ranges()
	need := signaling.Len() + descriptorMargin + max(r.cfg.MaxConnections, 0)
	if !r.media.FanIn() {
		need += media.Len()
	}
	if r.fdLimit > 0 && r.fdLimit < need {
		r.log.Warn("the file descriptor limit does not cover every relay port and SIPCAR_MAX_CONNECTIONS at once; connections are refused first when descriptors run short (raise ulimit -n / LimitNOFILE / the container's nofile)",
			"descriptor_limit", r.fdLimit, "wanted", need)
	}
}

// Ready reports whether the relay takes new calls: its listeners are open and it is not
// draining.
func (r *Relay) Ready() bool { return r.ready.Load() }

func mediaModeName(m *mediarelay.Relay) string {
	if m.FanIn() {
		return "fan-in (nftables TPROXY)"
	}
	return "a socket per relay port"
}

// shutdown closes every socket and binding and waits for the readers.
func (r *Relay) shutdown() {
	r.tp.close()
	r.m.Close()
	r.media.Close()
}

// Drain stops accepting new calls (new INVITEs are answered 503 with Retry-After) while calls in
// progress go on.
func (r *Relay) Drain() {
	r.ready.Store(false)
	r.draining.Store(true)
}

// ActiveCalls returns how many calls hold media.
func (r *Relay) ActiveCalls() int { return r.calls.count() }

// inbound is where a message came from and what it reached.
type inbound struct {
	transport string
	src       netip.AddrPort
	local     netip.AddrPort // the listener or binding address it reached; in transparent mode, where it was going
	listener  bool           // local is a listener, not a binding
	// transparent: intercepted by TPROXY (or REDIRECT); local is the original destination.
	transparent bool
	conn        *streamConn // TCP/TLS: the connection it came over
}

// bindAddr returns the local address that stands for a (one of sipcar's advertised addresses).
func (r *Relay) bindAddr(a netip.AddrPort) netip.AddrPort {
	if local, ok := r.cfg.PublicBind[a.Addr()]; ok {
		return netip.AddrPortFrom(local, a.Port())
	}
	return a
}

// logOnce logs at most once per source per interval, so that a flood does not flood the log.
func (r *Relay) logOnce(src netip.AddrPort, msg string, args ...any) {
	if r.metrics.logLimit.allow(src.Addr(), time.Now()) {
		r.log.Warn(msg, args...)
	}
}

// topViaSentBy returns the sent-by of the message's top Via when it is an IP literal.
func topViaSentBy(m *rewrite.Message) (netip.AddrPort, bool) {
	return rewrite.ViaSentBy(m.TopVia())
}
