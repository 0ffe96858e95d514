package mediarelay

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// Socket buffer sizes (portRcvBuf is in relay.go). Fan-in sockets carry every stream of a
// worker, so they get room for a scheduling hiccup at full rate; the FORCE variants pass
// net.core.*mem_max when privileged.
const (
	fanInRcvBuf = 8 << 20
	sendBuf     = 4 << 20
)

// packetIO is how a Linux relay moves packets: worker goroutines, each with its own epoll set,
// fan-in sockets and raw sockets (worker_linux.go), reading in batches and sending in batches.
type packetIO struct {
	ns  *netns
	raw bool // fan-in workers send through raw sockets
	nft bool // the nftables table is installed
	// portsRecv: every reserved port's socket is read too (fallback, and ModeAuto beside
	// fan-in, for what reaches the ports through bridges).
	portsRecv bool
	fanInPort [2]uint16 // the fan-in sockets' port per family (0 IPv4, 1 IPv6)

	workers []*worker
	wake    int // eventfd in every worker's epoll set; readable once Close begins
	wg      sync.WaitGroup

	kern    *kernelPath // the kernel fast path (kernel_linux.go); nil when off or unavailable
	kernWhy string      // why it is (not) in use
}

// open opens the receive sockets and then the kernel fast path, as cfg asks.
func (r *Relay) open() error {
	if err := r.openSockets(); err != nil {
		return err
	}
	return r.openKernel()
}

// openSockets opens the receive sockets of the configured mode, in the calling thread's
// network namespace, which the relay keeps for what it opens later.
func (r *Relay) openSockets() error {
	r.wake = -1
	ns, err := currentNetns()
	if err != nil {
		return err
	}
	r.ns = ns
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
		r.counters = append(r.counters, &w.packetCounters)
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
			fd, p, err := sock.OpenFanIn(v4, true, port[fi])
			if err != nil {
				if !v4 && port[fi] == 0 && errors.Is(err, unix.EAFNOSUPPORT) {
					break // no IPv6 in this kernel
				}
				return err
			}
			sock.SetBuffers(fd, fanInRcvBuf, sendBuf)
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

// startLocked starts the packet workers. Callers hold r.mu.
func (r *Relay) startLocked() {
	for _, w := range r.workers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			w.run()
		}()
	}
}

// shutdown stops the workers after their current batch, then closes the sockets, the
// workers' own and the eventfd, and removes the nftables table.
func (r *Relay) shutdown(sockets map[*portSocket]struct{}) error {
	var errs []error
	if r.wake >= 0 {
		one := [8]byte{1}
		if _, err := unix.Write(r.wake, one[:]); err != nil {
			errs = append(errs, fmt.Errorf("wake workers: %w", err))
		}
	}
	r.wg.Wait()
	r.closeSockets(sockets)
	for _, w := range r.workers {
		w.close()
	}
	if r.wake >= 0 {
		unix.Close(r.wake)
	}
	if err := r.closeKernel(); err != nil {
		errs = append(errs, err)
	}
	if r.nft {
		if err := r.ns.do(removeNft); err != nil {
			errs = append(errs, err)
		}
	}
	if r.ns != nil {
		r.ns.close()
	}
	return errors.Join(errs...)
}

// portSocket is the socket of one reserved relay port. Packet goroutines hold a reference for
// the length of one syscall, so that closing never lets a reused descriptor number be read as
// the old port.
type portSocket struct {
	fd      int
	idx     int // port - PortMin
	local   netip.AddrPort
	localSA sock.Addr
	srcInfo [sock.SourceSpace]byte // local's address as the source of a raw socket's datagram
	srcLen  int
	// worker is the worker whose epoll set holds the socket (when the ports receive), else nil.
	worker    *worker
	refs      atomic.Int32
	closeOnce sync.Once
}

// openPortLocked opens the socket of relay port addr (slot idx) in the relay's namespace and,
// when the ports receive, adds it to a worker's epoll set. Callers hold r.mu.
func (r *Relay) openPortLocked(addr netip.AddrPort, idx int) (*portSocket, error) {
	var fd int
	err := r.ns.do(func() (err error) {
		fd, err = sock.OpenPort(addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	if r.portsRecv {
		sock.SetBuffers(fd, portRcvBuf, 0) // else TPROXY steers all the port's packets to fan-in
	}
	s := &portSocket{fd: fd, idx: idx, local: addr}
	s.localSA.Set(addr)
	s.srcLen = sock.Source(&s.srcInfo, addr.Addr().Unmap())
	if r.portsRecv {
		s.worker = r.workers[idx%len(r.workers)]
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(idx), Pad: evPort}
		if err := unix.EpollCtl(s.worker.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("epoll: %w", err)
		}
	}
	return s, nil
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

// close takes the socket out of its worker's epoll set, stops new users, waits for those in
// flight (one syscall each) and closes it.
func (s *portSocket) close() {
	s.closeOnce.Do(func() {
		if s.worker != nil {
			_ = unix.EpollCtl(s.worker.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
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
