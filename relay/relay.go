package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// Relay terminates SIP on both of sipcar's sides and forwards every message, translated, to its
// next hop. Create it with [New], start it with [Relay.Run].
type Relay struct {
	cfg     Config
	log     *slog.Logger
	m       *pinhole.Map
	media   *mediarelay.Relay
	metrics *metrics
	flood   *floodGate
	replies *replyGate
	txs     *transactions
	absorb  *ownAnswers
	conns   *connLimits

	mu      sync.Mutex // guards the following
	closed  bool
	udp     map[netip.AddrPort]*udpSocket // by the address it stands for (listener or binding)
	spoof   map[netip.AddrPort]*udpSocket // transparent mode: sockets sending from servers' addresses
	aliases map[aliasKey]netip.AddrPort
	// origTransport is, per sip binding, the transport its original address is reached over
	// (the binding's own transport is the far side's: a phone on UDP behind a binding that a PBX
	// reaches over TLS).
	origTransport map[netip.AddrPort]string
	calls         map[string]*callState
	// hairpins names the second crossing of calls that hairpin (see passOf): by Call-ID and
	// outside party, the key its call state has; hairpinOf the other way round.
	hairpins  map[hairpinKey]string
	hairpinOf map[string]hairpinKey
	// retired is, per media binding, what streams removed from it carried (see observe).
	retired  map[*pinhole.Binding]pinhole.Counters
	draining bool

	streams streamState
	ready   atomic.Bool // listeners open and not draining
	// bufs lends UDP readers a buffer of maxUDPMessage bytes while they handle a message.
	bufs sync.Pool
	// fdLimit is the process's descriptor limit (0: unknown), set by Run before the listeners
	// open.
	fdLimit int

	wg sync.WaitGroup // socket readers
}

// aliasKey names an address a sender behind a NAT wrote in its Via, on one side.
type aliasKey struct {
	side pinhole.Side
	addr netip.AddrPort
}

// New builds a Relay: its server map and media relay, wired to each other. Nothing listens until
// [Relay.Run].
func New(cfg Config) (*Relay, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	r := &Relay{
		cfg:     cfg,
		log:     cfg.Logger,
		udp:     make(map[netip.AddrPort]*udpSocket),
		spoof:   make(map[netip.AddrPort]*udpSocket),
		aliases: make(map[aliasKey]netip.AddrPort),

		origTransport: make(map[netip.AddrPort]string),
		calls:         make(map[string]*callState),
		hairpins:      make(map[hairpinKey]string),
		hairpinOf:     make(map[string]hairpinKey),
		retired:       make(map[*pinhole.Binding]pinhole.Counters),
	}
	r.bufs.New = func() any { b := make([]byte, maxUDPMessage); return &b }
	r.streams.conns = make(map[connKey]*streamConn)
	r.streams.failed = make(map[netip.AddrPort]time.Time)
	r.flood = &floodGate{perAddr: newThrottle(cfg.MaxMessageRate, 2*cfg.MaxMessageRate),
		perPrefix: newThrottle(cfg.MaxPrefixRate, 2*cfg.MaxPrefixRate), bits4: cfg.RatePrefixV4, bits6: cfg.RatePrefixV6}
	if cfg.Mode == Upstream {
		r.flood.exempt = cfg.Upstream.Addr().Unmap()
	}
	r.replies = newReplyGate(cfg.MaxErrorReplyRate)
	r.txs = newTransactions(cfg.ResponseTimeout)
	r.absorb = newOwnAnswers()
	r.conns = newConnLimits(cfg.MaxConnections, cfg.MaxConnectionsPerSource, r.flood.exempt)
	var err error
	if r.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	mc := cfg.Media
	mp := cfg.Map.MediaPorts
	if mp == (pinhole.PortRange{}) {
		mp = pinhole.PortRange{First: 20000, Last: 29999}
		cfg.Map.MediaPorts = mp
	}
	mc.PortMin, mc.PortMax = mp.First, mp.Last
	mc.Events = (*mediaEvents)(r)
	if mc.Logger == nil {
		mc.Logger = cfg.Logger
	}
	if r.media, err = mediarelay.New(mc); err != nil {
		return nil, fmt.Errorf("media relay: %w", err)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(mediarelay.NewCollector(r.media)); err != nil {
			r.media.Close()
			return nil, fmt.Errorf("media relay metrics: %w", err)
		}
	}
	pc := cfg.Map
	pc.ReserveMedia = func(network string, a netip.AddrPort) (io.Closer, error) {
		return r.media.Reserve(network, r.bindAddr(a))
	}
	pc.ReserveSignaling = r.reserveSignaling
	pc.OnRelease = r.released
	// The answerer's first packets often overtake its answer: the media relay forwards them
	// through the answer's pair, reserved with the offer.
	pc.ReserveAnswerPair = true
	if pc.Registerer == nil {
		pc.Registerer = cfg.Registerer
	}
	if r.m, err = pinhole.New(pc); err != nil {
		r.media.Close()
		return nil, err
	}
	return r, nil
}

// Map returns the server map, for display.
func (r *Relay) Map() *pinhole.Map { return r.m }

// Media returns the media relay, for its counters.
func (r *Relay) Media() *mediarelay.Relay { return r.media }

// Run opens the listeners and relays until ctx is done; then it stops taking messages, closes
// every socket and binding, and returns. It returns an error at once if a listener cannot open.
func (r *Relay) Run(ctx context.Context) error {
	r.checkDescriptors()
	if r.cfg.ListenUDP.IsValid() {
		listen := listenUDP
		if r.cfg.Mode == Transparent {
			listen = listenTransparentUDP
		}
		c, err := listen(r.cfg.ListenUDP)
		if err != nil {
			r.shutdown()
			return err
		}
		r.serveUDP(c, r.cfg.ListenUDP, true, r.cfg.Mode == Transparent)
	}
	if r.cfg.ListenTCP.IsValid() || r.cfg.ListenTLS.IsValid() {
		if err := r.listenStreams(ctx); err != nil {
			r.shutdown()
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	bg.Add(4)
	go func() { defer bg.Done(); r.runTransactions(ctx) }()
	go func() { defer bg.Done(); _ = r.m.Run(ctx) }()
	go func() { defer bg.Done(); _ = r.media.Run(ctx) }()
	go func() { defer bg.Done(); r.syncTraffic(ctx) }()
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
	r.mu.Lock()
	r.closed = true
	socks := make([]*udpSocket, 0, len(r.udp))
	for _, s := range r.udp {
		socks = append(socks, s)
	}
	for _, s := range r.spoof {
		socks = append(socks, s)
	}
	r.mu.Unlock()
	for _, s := range socks {
		s.conn.Close()
	}
	r.closeStreams()
	r.m.Close()
	r.media.Close()
	r.wg.Wait()
}

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

// udpSizeLimit is the size above which a request goes over TCP when the operator asks for it:
// RFC 3261's 1300 bytes, 200 below the common path MTU of 1500.
const udpSizeLimit = 1300

// senderBinding returns the address a message leaves from on the far side, and its binding when
// it is one of the server map's.
func (r *Relay) senderBinding(p *msgPass) (netip.AddrPort, *pinhole.Binding, error) {
	in := p.in
	if r.cfg.Mode == Transparent && p.from == pinhole.Outside {
		// Toward the inside a transparent gateway changes only the destination: the phone sees
		// the message come from whoever sent it.
		return in.src, nil, nil
	}
	if to, ok := r.staticBinding(p.from, in.src, p.out); ok {
		return to, nil, nil
	}
	b, err := r.m.SignalingFor(p.t.source, p.from, p.out, in.src, p.callID)
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	r.noteTransport(b, in.transport)
	return b.Address(), b, nil
}

// noteTransport records the transport a sip binding's original address is reached over.
func (r *Relay) noteTransport(b *pinhole.Binding, transport string) {
	if transport == "" || transport == b.Transport() {
		return
	}
	r.mu.Lock()
	r.origTransport[b.Address()] = transport
	r.mu.Unlock()
}

// originalTransport returns the transport that reaches what b stands for.
func (r *Relay) originalTransport(b *pinhole.Binding) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.origTransport[b.Address()]; ok {
		return t
	}
	return b.Transport()
}

// transportTo returns the transport to reach dst over: a live TCP or TLS connection with it
// (the phone's own, RFC 5923 style reuse) wins over the binding's transport.
func (r *Relay) transportTo(dst netip.AddrPort, def string) string {
	r.streams.mu.Lock()
	defer r.streams.mu.Unlock()
	for _, tr := range [...]string{"tls", "tcp"} {
		if r.streams.conns[connKey{tr, dst}] != nil {
			return tr
		}
	}
	return def
}

// logOnce logs at most once per source per interval, so that a flood does not flood the log.
func (r *Relay) logOnce(src netip.AddrPort, msg string, args ...any) {
	if r.metrics.logLimit.allow(src.Addr(), time.Now()) {
		r.log.Warn(msg, args...)
	}
}

func (r *Relay) isDraining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

// Drain stops accepting new calls (new INVITEs are answered 503 with Retry-After) while calls in
// progress go on.
func (r *Relay) Drain() {
	r.ready.Store(false)
	r.mu.Lock()
	r.draining = true
	r.mu.Unlock()
}

// ActiveCalls returns how many calls hold media.
func (r *Relay) ActiveCalls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

func (r *Relay) setAlias(side pinhole.Side, via, src netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.aliases) > 100000 { // bounded: a flood of distinct Vias must not grow memory
		clear(r.aliases)
	}
	r.aliases[aliasKey{side, via}] = src
}

func (r *Relay) natAlias(side pinhole.Side, a netip.AddrPort) (netip.AddrPort, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	src, ok := r.aliases[aliasKey{side, a}]
	return src, ok
}

// reserveSignaling is the server map's reservation hook for sip bindings: it opens the
// binding's socket and serves it until the binding is released.
func (r *Relay) reserveSignaling(network string, addr netip.AddrPort) (io.Closer, error) {
	if network != "udp" {
		return r.serveBindingTCP(addr)
	}
	res, err := pinhole.ReserveSocket(network, addr)
	if err != nil {
		return nil, err
	}
	c, ok := res.(*net.UDPConn)
	if !ok {
		res.Close()
		return nil, fmt.Errorf("reserve %s %v: not a UDP socket", network, addr)
	}
	s := r.serveUDP(c, addr, false, false)
	if s == nil {
		return nil, errors.New("relay closed")
	}
	return s, nil
}

// topViaSentBy returns the sent-by of the message's top Via when it is an IP literal.
func topViaSentBy(m *rewrite.Message) (netip.AddrPort, bool) {
	return rewrite.ViaSentBy(m.TopVia())
}
