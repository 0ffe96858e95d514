package mediarelay

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
)

// Relay is the media data plane: it owns the relay ports' sockets and forwards every packet
// that reaches one of them to the other leg of its stream.
//
// Lifecycle: [New] opens the receive sockets (and in fan-in mode installs the nftables
// table); [Relay.Reserve] opens the socket of each relay port pinhole hands out;
// [Relay.AddStream] starts forwarding between reserved ports; [Relay.Run] runs the packet
// workers and housekeeping until its context ends, then closes the relay. [Relay.Close]
// stops everything, closes every socket the relay opened, including reserved ports, and
// removes the nftables table. All methods are safe for concurrent use.
//
// How packets move is the platform's (relay_linux.go: fan-in and batches; relay_other.go: a
// socket per port and a goroutine each); what becomes of a packet (rxState.forward),
// latching, statistics and events are the same everywhere.
type Relay struct {
	cfg   Config
	log   *slog.Logger
	base  time.Time  // packet arrivals count from here
	fanIn bool       // packets arrive through the nftables fan-in rule (Linux)
	paths []SidePath // per side and interface, as open chose them
	ports []portSlot // indexed by port - cfg.PortMin
	// counters holds every packet goroutine's counters, one set each; open fixes it.
	counters []*packetCounters
	quality  *qualityMetrics // histograms observed as streams end

	packetIO // the platform's sockets and packet goroutines

	mu      sync.Mutex // guards the following fields
	streams map[*Stream]struct{}
	sockets map[*portSocket]struct{}
	closed  bool
	started bool
	stopRun context.CancelFunc

	closeOnce sync.Once
	closeErr  error
}

// portRcvBuf is the receive buffer of a relay port's own socket where it receives: room for
// a burst of its one stream.
const portRcvBuf = 256 << 10

// portSlot is one relay port of the forwarding table. Packet goroutines read it without
// locks; the control plane stores under Relay.mu.
type portSlot struct {
	ep atomic.Pointer[endpoint]
	// shared lists the endpoints when several streams share the port (LegSpec.Shared); nil
	// otherwise, so the common case costs one more load.
	shared atomic.Pointer[[]*endpoint]
	sock   atomic.Pointer[portSocket]
}

// New opens a relay for the port range of cfg in the calling thread's network namespace.
// With ModeAuto it tries fan-in first, probes the bridges the sides' media arrives through
// (which needs CAP_NET_ADMIN and CAP_NET_RAW; see [Relay.Paths]) and logs which path each
// side's media takes. Fan-in needs Linux: elsewhere ModeFanIn fails and ModeAuto falls back
// to a socket per port. The caller must call [Relay.Run] to forward, and [Relay.Close]
// (which Run does on return) to release it.
func New(cfg Config) (*Relay, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("mediarelay config: %w", err)
	}
	r := &Relay{
		cfg:     cfg,
		log:     cfg.Logger,
		base:    cfg.Clock(),
		ports:   make([]portSlot, int(cfg.PortMax)-int(cfg.PortMin)+1),
		quality: newQualityMetrics(),
		streams: map[*Stream]struct{}{},
		sockets: map[*portSocket]struct{}{},
	}
	if err := r.open(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// FanIn reports whether the relay receives through the nftables fan-in rule (else only through
// a socket per port); in ModeAuto, which interfaces it serves is in [Relay.Paths].
func (r *Relay) FanIn() bool { return r.fanIn }

// Paths returns the receive path of every side's media, per interface it arrives on, as New
// chose them.
func (r *Relay) Paths() []SidePath { return append([]SidePath(nil), r.paths...) }

// setPaths gives every side the same path, for the modes that decide without probing.
func (r *Relay) setPaths(p Path, reason, detail string) {
	for _, s := range r.cfg.Sides {
		r.paths = append(r.paths, SidePath{Side: s.Name, Path: p, Reason: reason, Detail: detail})
	}
}

// logPaths says once per side and interface which path its media takes, and why.
func (r *Relay) logPaths() {
	for _, p := range r.paths {
		r.log.Info("mediarelay: receive path", "side", p.Side, "ingress", p.Ingress, "path", p.Path.String(),
			"reason", p.Reason, "why", p.Detail)
	}
}

// Run forwards packets until ctx ends or Close is called, then closes the relay: it stops
// reading, sends what it has read, and closes every socket. It returns Close's error.
func (r *Relay) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := r.start(cancel); err != nil {
		return err
	}
	r.housekeep(ctx)
	return r.Close()
}

// start starts the packet goroutines; cancel, if set, is called by Close.
func (r *Relay) start(cancel context.CancelFunc) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("mediarelay: closed")
	}
	if r.started {
		return errors.New("mediarelay: already running")
	}
	r.started = true
	r.stopRun = cancel
	r.startLocked()
	return nil
}

// Close stops the packet goroutines after their current packets, closes every socket the
// relay opened (reserved ports included: their closers then do nothing) and removes the
// nftables table. It is safe to call more than once.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		if r.stopRun != nil {
			r.stopRun()
		}
		sockets := r.sockets
		r.sockets = map[*portSocket]struct{}{}
		r.streams = map[*Stream]struct{}{}
		r.mu.Unlock()
		r.closeErr = r.shutdown(sockets)
	})
	return r.closeErr
}

// closeSockets takes the sockets off the forwarding table and closes them; shutdown calls it
// once no packet goroutine can send on them any more, or to stop those that read them.
func (r *Relay) closeSockets(sockets map[*portSocket]struct{}) {
	for s := range sockets {
		r.ports[s.idx].clear()
		r.ports[s.idx].sock.CompareAndSwap(s, nil)
		s.close()
	}
}

// reservation is what Reserve returns: closing it closes the port's socket.
type reservation struct {
	r *Relay
	s *portSocket
}

func (v reservation) Close() error {
	v.r.release(v.s)
	return nil
}

// Reserve opens the socket of relay port addr, which holds the port for the caller until the
// returned Closer is closed; it has the shape of pinhole's port reservation hook. proto is
// "udp" (or "udp4", "udp6"); addr is one of this host's addresses (not a wildcard: packets
// leave from it) with a port in the relay range. In fallback mode the socket is what receives
// the port's packets; in ModeAuto it receives what fan-in does not (packets through bridges
// the probe did not see reach fan-in); in ModeFanIn it only keeps other programs off the port.
// With SendPerPort, it sends. Release a port only after removing the stream that uses it: closing
// the reservation stops forwarding through the port.
func (r *Relay) Reserve(proto string, addr netip.AddrPort) (io.Closer, error) {
	addr = unmapAddrPort(addr)
	switch {
	case proto != "udp" && proto != "udp4" && proto != "udp6":
		return nil, fmt.Errorf("reserve %s %v: mediarelay relays udp only", proto, addr)
	case !addr.IsValid() || addr.Addr().IsUnspecified():
		return nil, fmt.Errorf("reserve %v: a relay port needs a specific address", addr)
	case addr.Port() < r.cfg.PortMin || addr.Port() > r.cfg.PortMax:
		return nil, fmt.Errorf("reserve %v: port outside the relay range %d-%d", addr, r.cfg.PortMin, r.cfg.PortMax)
	}
	idx := int(addr.Port() - r.cfg.PortMin)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("reserve %v: relay closed", addr)
	}
	if r.ports[idx].sock.Load() != nil {
		return nil, fmt.Errorf("reserve %v: port already reserved", addr)
	}
	s, err := r.openPortLocked(addr, idx)
	if err != nil {
		return nil, fmt.Errorf("reserve %v: %w", addr, err)
	}
	r.ports[idx].sock.Store(s)
	r.sockets[s] = struct{}{}
	return reservation{r, s}, nil
}

func (r *Relay) release(s *portSocket) {
	r.mu.Lock()
	if _, ok := r.sockets[s]; !ok {
		r.mu.Unlock()
		return // released before, or the relay closed it
	}
	delete(r.sockets, s)
	slot := &r.ports[s.idx]
	if ep := slot.ep.Load(); ep != nil && ep.sock == s {
		slot.clear()
	}
	slot.sock.CompareAndSwap(s, nil)
	r.mu.Unlock()
	s.close()
}
