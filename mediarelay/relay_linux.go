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

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/rawudp"
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
type Relay struct {
	cfg   Config
	log   *slog.Logger
	base  time.Time // packet arrivals count from here
	ns    *netns
	fanIn bool
	raw   bool // fan-in workers send through raw sockets
	nft   bool // the nftables table is installed
	// portsRecv: every reserved port's socket is read too (fallback, and ModeAuto beside
	// fan-in, for what reaches the ports through bridges).
	portsRecv bool
	fanInPort [2]uint16  // the fan-in sockets' port per family (0 IPv4, 1 IPv6)
	paths     []SidePath // per side and interface, as open chose them

	quality *qualityMetrics // histograms observed as streams end

	ports   []portSlot // indexed by port - cfg.PortMin
	workers []*worker
	wake    int // eventfd in every worker's epoll set; readable once Close begins
	wg      sync.WaitGroup

	mu      sync.Mutex // guards the following fields
	streams map[*Stream]struct{}
	sockets map[*portSocket]struct{}
	closed  bool
	started bool
	stopRun context.CancelFunc

	closeOnce sync.Once
	closeErr  error
}

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
// side's media takes. The caller must call
// [Relay.Run] to forward, and [Relay.Close] (which Run does on return) to release it.
func New(cfg Config) (*Relay, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("mediarelay config: %w", err)
	}
	ns, err := currentNetns()
	if err != nil {
		return nil, err
	}
	r := &Relay{
		cfg:     cfg,
		log:     cfg.Logger,
		base:    cfg.Clock(),
		ns:      ns,
		ports:   make([]portSlot, int(cfg.PortMax)-int(cfg.PortMin)+1),
		quality: newQualityMetrics(),
		wake:    -1,
		streams: map[*Stream]struct{}{},
		sockets: map[*portSocket]struct{}{},
	}
	if err := r.open(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *Relay) open() error {
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	r.wake = wake
	for i := 0; i < r.cfg.Workers; i++ {
		w, err := newWorker(r)
		if err != nil {
			return err
		}
		r.workers = append(r.workers, w)
	}
	ports := fmt.Sprintf("%d-%d", r.cfg.PortMin, r.cfg.PortMax)
	if r.cfg.Mode == ModeFallback {
		r.portsRecv = true
		r.setPaths(PathPerPort, "mode-fallback", "SIPCAR_MEDIA_MODE=fallback")
		r.log.Info("mediarelay: a socket per relay port (fallback mode)", "ports", ports, "workers", len(r.workers))
		// A table left by a fan-in run that crashed would still steer the ports away from
		// their sockets; without the privilege to remove it this fails, and the log says why.
		if err := removeNft(); err != nil {
			r.log.Debug("mediarelay: no stale nftables table removed", "reason", err)
		}
		return nil
	}
	// First every interface is steered to the fan-in sockets, which is all ModeFanIn does
	// and what ModeAuto's probes look through.
	if err := r.openFanIn(); err != nil {
		if r.cfg.Mode == ModeFanIn {
			return fmt.Errorf("mediarelay fan-in: %w", err)
		}
		r.closeFanIn()
		r.portsRecv = true
		r.setPaths(PathPerPort, "no-fanin", fmt.Sprintf("no fan-in (needs CAP_NET_ADMIN and nft): %v", err))
		r.log.Warn("mediarelay: no fan-in (needs CAP_NET_ADMIN and nft): falling back to a socket per relay port", "reason", err)
		return nil
	}
	r.fanIn = true
	if r.cfg.Mode == ModeFanIn {
		r.setPaths(PathFanIn, "mode-fanin", "SIPCAR_MEDIA_MODE=fanin: every interface steered to the fan-in sockets")
		r.log.Info("mediarelay: fan-in receive through nftables TPROXY", "ports", ports, "workers", len(r.workers), "send", r.sendScheme())
		r.logPaths()
		return nil
	}
	// ModeAuto: the ports' own sockets receive too, and bridges where the probe did not
	// reach a fan-in socket are left to them (see choosePaths).
	r.portsRecv = true
	ok := r.choosePaths()
	if err := installNft(r.nftSpec(ok)); err != nil {
		// A kernel or nft without meta iifkind, say: the ports' own sockets then take all.
		if rerr := removeNft(); rerr != nil {
			return errors.Join(err, rerr)
		}
		r.nft, r.fanIn, r.paths = false, false, nil
		r.closeFanIn()
		r.setPaths(PathPerPort, "no-fanin", fmt.Sprintf("the fan-in table with its bridge rule was refused: %v", err))
		r.log.Warn("mediarelay: no fan-in: falling back to a socket per relay port", "reason", err)
		return nil
	}
	r.log.Info("mediarelay: fan-in receive through nftables TPROXY, except through bridges it does not reach", "ports", ports,
		"workers", len(r.workers), "send", r.sendScheme(), "bridges_fanin", ok)
	r.logPaths()
	return nil
}

func (r *Relay) sendScheme() SendScheme {
	if r.fanIn && r.raw {
		return SendRaw
	}
	return SendPerPort
}

// openFanIn opens every worker's transparent sockets and raw sockets and installs the rule
// that steers the port range to them.
func (r *Relay) openFanIn() error {
	var port [2]uint16 // per family: 0 IPv4, 1 IPv6
	for fi, v4 := range []bool{true, false} {
		for _, w := range r.workers {
			fd, p, err := openFanIn(v4, port[fi])
			if err != nil {
				if !v4 && port[fi] == 0 && errors.Is(err, unix.EAFNOSUPPORT) {
					break // no IPv6 in this kernel
				}
				return fmt.Errorf("fan-in socket: %w", err)
			}
			port[fi] = p
			if err := w.addFanIn(fd, fi); err != nil {
				return err
			}
		}
	}
	if r.cfg.FanInSend == SendRaw {
		r.raw = true
		for _, w := range r.workers {
			if err := w.openRaw(); err != nil {
				r.log.Warn("mediarelay: no raw sockets: sending from each relay port's socket", "reason", err)
				r.raw = false
				break
			}
		}
	}
	r.fanInPort = port
	if err := installNft(r.nftSpec(nil)); err != nil {
		return err
	}
	r.nft = true
	return nil
}

// nftSpec is the table for the relay's fan-in sockets. In ModeAuto, packets that arrive
// through a bridge other than those in fanInBridges are left to the ports' own sockets.
func (r *Relay) nftSpec(fanInBridges []string) nftSpec {
	return nftSpec{min: r.cfg.PortMin, max: r.cfg.PortMax, port4: r.fanInPort[0], port6: r.fanInPort[1],
		skipBridges: r.cfg.Mode == ModeAuto && r.portsRecv, fanInBridges: fanInBridges}
}

func (r *Relay) closeFanIn() {
	for _, w := range r.workers {
		w.closeFanIn()
	}
	r.raw = false
}

// FanIn reports whether the relay receives through the nftables fan-in rule (else only through
// a socket per port); in ModeAuto, which interfaces it serves is in [Relay.Paths].
func (r *Relay) FanIn() bool { return r.fanIn }

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

// start starts the packet workers; cancel, if set, is called by Close.
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
	for _, w := range r.workers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			w.run()
		}()
	}
	return nil
}

// Close stops the workers after their current batch, closes every socket the relay opened
// (reserved ports included: their closers then do nothing) and removes the nftables table.
// It is safe to call more than once.
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

		var errs []error
		if r.wake >= 0 {
			one := [8]byte{1}
			if _, err := unix.Write(r.wake, one[:]); err != nil {
				errs = append(errs, fmt.Errorf("wake workers: %w", err))
			}
		}
		r.wg.Wait()
		for s := range sockets {
			r.ports[s.idx].clear()
			r.ports[s.idx].sock.CompareAndSwap(s, nil)
			s.close(-1)
		}
		for _, w := range r.workers {
			w.close()
		}
		if r.wake >= 0 {
			unix.Close(r.wake)
		}
		if r.nft {
			if err := r.ns.do(removeNft); err != nil {
				errs = append(errs, err)
			}
		}
		r.ns.close()
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}

// portSocket is the socket of one reserved relay port. Packet goroutines hold a reference for
// the length of one syscall, so that closing never lets a reused descriptor number be read as
// the old port.
type portSocket struct {
	fd        int
	idx       int // port - PortMin
	local     netip.AddrPort
	localSA   sockaddr
	srcInfo   [rawudp.SourceSpace]byte // local's address as the source of a raw socket's datagram
	srcLen    int
	worker    *worker // whose epoll set holds it (when the ports receive), else nil
	refs      atomic.Int32
	closeOnce sync.Once
}

const socketClosing = -1 << 31

func (s *portSocket) acquire() bool {
	for {
		n := s.refs.Load()
		if n < 0 {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *portSocket) release() { s.refs.Add(-1) }

// close stops new users, waits for those in flight (one syscall each) and closes the socket.
func (s *portSocket) close(epfd int) {
	s.closeOnce.Do(func() {
		if epfd >= 0 {
			_ = unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
		}
		for {
			n := s.refs.Load()
			if s.refs.CompareAndSwap(n, n|socketClosing) {
				break
			}
		}
		for s.refs.Load() != socketClosing {
			time.Sleep(10 * time.Microsecond)
		}
		unix.Close(s.fd)
	})
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
	rcvBuf := portRcvBuf
	if !r.portsRecv {
		rcvBuf = 0 // TPROXY steers all the port's packets to the fan-in sockets
	}
	var fd int
	err := r.ns.do(func() (err error) {
		fd, err = openPortSocket(addr, rcvBuf)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reserve %v: %w", addr, err)
	}
	s := &portSocket{fd: fd, idx: idx, local: addr}
	s.localSA.set(addr)
	s.srcLen = rawudp.Source(&s.srcInfo, addr.Addr().Unmap())
	if r.portsRecv {
		s.worker = r.workers[idx%len(r.workers)]
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(idx), Pad: evPort}
		if err := unix.EpollCtl(s.worker.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("reserve %v: epoll: %w", addr, err)
		}
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
	epfd := -1
	if s.worker != nil {
		epfd = s.worker.epfd
	}
	s.close(epfd)
}
