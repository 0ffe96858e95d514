package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/relay/policy"
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
	flood   *throttle
	pending *pendingRequests
	absorb  *ownAnswers

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
	r.streams.conns = make(map[connKey]*streamConn)
	r.streams.failed = make(map[netip.AddrPort]time.Time)
	r.flood = newThrottle(cfg.MaxMessageRate, 2*cfg.MaxMessageRate)
	r.pending = newPendingRequests(cfg.ResponseTimeout)
	r.absorb = &ownAnswers{keys: make(map[pendingKey]time.Time)}
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
	go func() { defer bg.Done(); r.runPending(ctx) }()
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

// handle processes one message.
func (r *Relay) handle(in inbound, raw []byte) {
	var m rewrite.Message
	from := r.cfg.sideOf(in.src.Addr())
	r.metrics.received.WithLabelValues(from.String(), in.transport).Inc()
	if !r.flood.allow(in.src.Addr(), time.Now()) {
		r.metrics.dropped.WithLabelValues("flood").Inc()
		r.logOnce(in.src, "source throttled", "src", in.src, "limit_per_second", r.cfg.MaxMessageRate)
		return
	}
	if err := rewrite.Parse(raw, &m); err != nil {
		r.refuse(in, raw, err)
		return
	}
	callID := string(m.CallID())
	method := string(m.Method())
	isReq := m.IsRequest()
	if isReq && method == "ACK" && r.absorb.take(pendingKey{callID, string(rewrite.ViaParam(m.TopVia(), "branch")), "ACK"}) {
		return // the ACK of a final response sipcar sent itself
	}

	if isReq && method == "INVITE" && len(m.ToTag()) == 0 && r.isDraining() {
		r.answer(in, raw, 503, "Service Unavailable", "sipcar is shutting down", 30)
		return
	}
	if isReq && m.MaxForwards() == 0 && method != "ACK" {
		r.answer(in, raw, 483, "Too Many Hops", "", 0)
		return
	}

	// Where the message goes: what reached a binding goes where the binding stands for.
	var next netip.AddrPort
	out := in.transport
	if !in.listener {
		b, ok := r.m.Resolve(from, in.local)
		if !ok {
			r.metrics.dropped.WithLabelValues("stale-binding").Inc() // expired between receipt and here
			return
		}
		next, out = b.ForwardTo(), r.transportTo(b.ForwardTo(), r.originalTransport(b))
		b.Received(len(raw), r.m.Now())
	} else if isReq && from == pinhole.Outside && r.cfg.Mode == Upstream {
		next, out = r.cfg.Upstream, r.cfg.UpstreamTransport
	} else if via, ok := topViaSentBy(&m); ok && !isReq && from == pinhole.Outside && r.cfg.Mode == Upstream && r.isPublicListen(via) {
		// A phone's response to the upstream's request (sent from the public listener's
		// address): back to the upstream over its own transport, whatever the phone's was.
		next, out = r.cfg.Upstream, r.cfg.UpstreamTransport
	} else if in.transparent {
		if from == pinhole.Outside || r.m.Own(pinhole.Outside, in.local.Addr()) || r.m.Own(pinhole.Inside, in.local.Addr()) {
			// Interception serves the inside's traffic to the world; anything else is not sipcar's.
			r.metrics.dropped.WithLabelValues("not-intercepted").Inc()
			r.answer(in, raw, 403, "Forbidden", "sipcar relays only what the gateway intercepts from the inside", 0)
			return
		}
		next = in.local
	}

	if isReq && !r.permitted(&m, in, raw, from, next, method) {
		return
	}

	key := r.passOf(callID, from, in.src, next, &m)
	t := &msgTranslator{r: r, transport: in.transport, src: in.src, callID: key, next: next, out: out,
		fork: r.forkOf(key, from, &m)}
	if isReq {
		if via, ok := topViaSentBy(&m); ok {
			t.senderVia = via
			if via != in.src {
				r.setAlias(from, via, in.src)
			}
		}
	}
	var res rewrite.Result
	if err := rewrite.Rewrite(&res, &m, rewrite.Side(from), t); err != nil {
		if t.tx != nil {
			t.tx.Rollback()
		}
		r.refuse(in, raw, err)
		return
	}
	if !next.IsValid() {
		var ok bool
		if next, ok = nextHop(res.Out, isReq); !ok {
			if t.tx != nil {
				t.tx.Rollback()
			}
			r.metrics.dropped.WithLabelValues("no-route").Inc()
			if isReq {
				r.answer(in, raw, 403, "Forbidden", "sipcar forwards only to its upstream and bindings", 0)
			}
			return
		}
		if r.cfg.Mode == Upstream && from == pinhole.Inside && isReq && r.cfg.sideOf(next.Addr()) == pinhole.Inside {
			// Not an open relay: from inside, a request must leave toward a binding's address.
			if t.tx != nil {
				t.tx.Rollback()
			}
			r.answer(in, raw, 403, "Forbidden", "no binding for "+next.String(), 0)
			return
		}
	}
	if isReq && method != "ACK" && out == "udp" && r.cfg.UDPTCPFallback && len(res.Out) > udpSizeLimit {
		// RFC 3261 section 18.1.1: a request this large goes over a congestion-controlled
		// transport. Rewrite it again for TCP (its Via and the bindings it makes say so).
		if t.tx != nil {
			t.tx.Rollback()
		}
		out = "tcp"
		t = &msgTranslator{r: r, transport: in.transport, src: in.src, callID: key, next: next, out: out,
			senderVia: t.senderVia, fork: t.fork}
		if err := rewrite.Rewrite(&res, &m, rewrite.Side(from), t); err != nil {
			if t.tx != nil {
				t.tx.Rollback()
			}
			r.refuse(in, raw, err)
			return
		}
	}
	if t.tx == nil && r.hasCall(key) {
		t.tx = r.m.Begin(key, r.callSource(in.src))
	}
	if t.tx != nil {
		for _, s := range res.Streams {
			switch s.Disposition {
			case rewrite.Held:
				t.tx.Hold(from, s.Part, s.Index)
			case rewrite.Rejected:
				t.tx.Drop(s.Part, s.Index)
			}
		}
		if err := t.tx.Commit(); err != nil {
			r.refuse(in, raw, err)
			return
		}
	}
	r.afterRewrite(&m, t, from, in, &res)

	// Send from the sender's own binding on the far side, so that the receiver sees one address
	// per party and its replies come back through the same binding.
	local, sb, err := r.senderBinding(from, in, out, callID)
	if err != nil {
		r.refuse(in, raw, err)
		return
	}
	// Watch the transaction before sending: the response may come back on another socket's
	// goroutine before this one would get to it.
	watched := r.trackTransaction(&m, in, raw, out, isReq, method)
	if err := r.send(local, out, next, res.Out); err != nil {
		if watched.callID != "" {
			r.pending.answered(watched)
		}
		r.log.Debug("send failed", "to", next, "err", err)
		r.metrics.dropped.WithLabelValues("send").Inc()
		if isReq && method != "ACK" {
			r.answer(in, raw, 503, "Service Unavailable", "next hop unreachable", 0)
		}
		return
	}
	r.metrics.forwarded.WithLabelValues(from.Other().String(), out).Inc()
	if sb != nil {
		// The signaling flow of the session table: this binding talks to next.
		sb.SetPeer(next)
		sb.Sent(len(res.Out), r.m.Now())
	}
	if r.log.Enabled(context.Background(), slog.LevelDebug) {
		r.log.Debug("relayed", "method", method, "status", m.StatusCode(), "call", callID, "src", in.src,
			"at", in.local, "from", local, "to", next, "transport", out)
	}
}

// trackTransaction watches a request forwarded over UDP until its response (see
// pendingRequests); a response stops the watch of its request.
func (r *Relay) trackTransaction(m *rewrite.Message, in inbound, raw []byte, out string, isReq bool, method string) pendingKey {
	branch := string(rewrite.ViaParam(m.TopVia(), "branch"))
	if branch == "" {
		return pendingKey{}
	}
	if isReq {
		if out == "udp" && method != "ACK" {
			k := pendingKey{string(m.CallID()), branch, method}
			r.pending.watch(k, in, raw, time.Now())
			return k
		}
		return pendingKey{}
	}
	_, cseqMethod := m.CSeq()
	if m.StatusCode() >= 200 || string(cseqMethod) == "INVITE" {
		r.pending.answered(pendingKey{string(m.CallID()), branch, string(cseqMethod)})
	}
	return pendingKey{}
}

// permitted screens a request by the policy: requests out of a dialog, but not CANCEL (it follows
// an INVITE that was screened) nor the ACK of a response (those carry a To tag). A denied
// request is answered (403, or 503 when over its rate) or, for silent rules, dropped.
func (r *Relay) permitted(m *rewrite.Message, in inbound, raw []byte, from pinhole.Side, next netip.AddrPort, method string) bool {
	p := r.cfg.Policy
	inDialog := len(m.ToTag()) > 0
	if p == nil || inDialog || method == "CANCEL" {
		return true
	}
	req := policy.Request{
		Src:        in.src,
		DstAddr:    next.Addr(),
		DstSide:    policy.Outside,
		ToUpstream: r.cfg.Mode == Upstream && next == r.cfg.Upstream,
		Transport:  in.transport,
		Method:     method,
		Initial:    policy.Initial(method, inDialog),
	}
	if from == pinhole.Outside {
		req.DstSide = policy.Inside
	}
	if host := rewrite.URIHost(m.RequestURI()); host != "" {
		req.DstHost = host
	}
	d := p.Evaluate(req)
	if d.Action == policy.Permit && !d.RateLimited {
		return true
	}
	r.metrics.dropped.WithLabelValues("policy").Inc()
	if d.Silent || method == "ACK" {
		return false
	}
	// A denied source is not welcome: 403 without Retry-After. One over its rate may come back:
	// 503 with Retry-After.
	code, reason, retry := 403, "Forbidden", 0
	if d.RateLimited {
		code, reason, retry = 503, "Service Unavailable", d.RetryAfterSeconds()
	}
	r.answerWarning(in, raw, code, reason, d.Warning, retry)
	return false
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

// senderBinding returns the address a message from in.src leaves from on the far side, and its
// binding when it is one of the server map's.
func (r *Relay) senderBinding(from pinhole.Side, in inbound, out, callID string) (netip.AddrPort, *pinhole.Binding, error) {
	if r.cfg.Mode == Transparent && from == pinhole.Outside {
		// Toward the inside a transparent gateway changes only the destination: the phone sees
		// the message come from whoever sent it.
		return in.src, nil, nil
	}
	if to, ok := r.staticBinding(from, in.src, out); ok {
		return to, nil, nil
	}
	b, err := r.m.Signaling(from, out, in.src, callID)
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

// refuse answers a message sipcar will not forward: 400 for a malformed request, 505 for
// another SIP version, 415 for an SDP it cannot read, 503 when no port or call is left.
func (r *Relay) refuse(in inbound, raw []byte, err error) {
	var perr *rewrite.Error
	switch {
	case errors.As(err, &perr):
		r.metrics.malformed.WithLabelValues(in.transport).Inc()
		r.logOnce(in.src, "malformed message", "src", in.src, "err", err)
		code, reason := 400, "Bad Request"
		if errors.Is(err, rewrite.ErrVersion) {
			code, reason = 505, "Version Not Supported"
		} else if errors.Is(err, rewrite.ErrUnsupported) {
			code, reason = 415, "Unsupported Media Type"
		}
		r.answer(in, raw, code, reason, perr.Where+": "+perr.Reason, 0)
	case errors.Is(err, pinhole.ErrNoPorts), errors.Is(err, pinhole.ErrCallLimit):
		r.metrics.dropped.WithLabelValues("no-ports").Inc()
		r.logOnce(in.src, "no relay ports or call limit", "src", in.src, "err", err)
		r.answer(in, raw, 503, "Service Unavailable", err.Error(), 5)
	default:
		r.metrics.dropped.WithLabelValues("error").Inc()
		r.log.Warn("message not forwarded", "src", in.src, "err", err)
		r.answer(in, raw, 500, "Server Internal Error", "sipcar could not forward the request", 0)
	}
}

// answer sends sipcar's own response to a request back where it came from. Responses and ACKs
// get none.
func (r *Relay) answer(in inbound, req []byte, code int, reason, warning string, retryAfter int) {
	if warning != "" {
		warning = `399 sipcar "` + quoteWarning(warning) + `"`
	}
	r.answerWarning(in, req, code, reason, warning, retryAfter)
}

// answerWarning is answer with the Warning header's whole value given.
func (r *Relay) answerWarning(in inbound, req []byte, code int, reason, warning string, retryAfter int) {
	out, ends := replyTo(req, code, reason, warning, retryAfter)
	if out == nil {
		return
	}
	if ends != nil {
		r.absorb.add(*ends, time.Now())
	}
	r.metrics.answered.WithLabelValues(strconv.Itoa(code)).Inc()
	if in.conn != nil {
		_ = in.conn.write(out)
		return
	}
	_ = r.send(in.local, "udp", in.src, out)
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

// nextHop finds where a message without a binding to follow goes (RFC 3261): a request to its
// top Route when that is a loose router, else to its Request-URI; a response to its top Via
// (received and rport when present).
func nextHop(msg []byte, request bool) (netip.AddrPort, bool) {
	var m rewrite.Message
	if rewrite.Parse(msg, &m) != nil {
		return netip.AddrPort{}, false
	}
	if !request {
		return rewrite.ViaResponseAddr(m.TopVia())
	}
	if route, ok := m.Header("Route"); ok {
		if a, lr, ok := rewrite.RouteTarget(route); ok && lr {
			return a, true
		}
	}
	return rewrite.URIAddr(m.RequestURI())
}
