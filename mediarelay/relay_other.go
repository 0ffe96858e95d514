//go:build !linux

package mediarelay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// packetIO is how the relay moves packets outside Linux, where it serves development and tests
// rather than load: every relay port's socket is read by a goroutine of its own with plain
// net.UDPConn reads, and each packet is written on the other leg's port socket. No fan-in, no
// nftables, no batching; latching, statistics and events are the same code as on Linux.
type packetIO struct {
	pc   packetCounters // shared by the port goroutines
	run  chan struct{}  // closed by start: the port goroutines forward from then on
	stop chan struct{}  // closed by Close: port goroutines still waiting for run give up
	wg   sync.WaitGroup // the port goroutines
}

// open chooses the per-port mode: fan-in needs Linux.
func (r *Relay) open() error {
	if err := r.openKernel(); err != nil {
		return err
	}
	r.run, r.stop = make(chan struct{}), make(chan struct{})
	r.counters = []*packetCounters{&r.pc}
	ports := fmt.Sprintf("%d-%d", r.cfg.PortMin, r.cfg.PortMax)
	switch r.cfg.Mode {
	case ModeFanIn:
		return fmt.Errorf("mediarelay fan-in: it needs Linux (nftables TPROXY, transparent sockets); use auto or fallback: %w",
			errors.ErrUnsupported)
	case ModeFallback:
		r.setPaths(PathPerPort, "mode-fallback", "SIPCAR_MEDIA_MODE=fallback")
		r.log.Info("mediarelay: a socket per relay port (fallback mode)", "ports", ports)
	default:
		r.setPaths(PathPerPort, "no-fanin", "no fan-in: it needs Linux")
		r.log.Warn("mediarelay: no fan-in (it needs Linux): a socket per relay port", "ports", ports)
	}
	return nil
}

// startLocked lets the port goroutines forward. Callers hold r.mu.
func (r *Relay) startLocked() { close(r.run) }

// shutdown closes the sockets, which ends their goroutines, and waits for them.
func (r *Relay) shutdown(sockets map[*portSocket]struct{}) error {
	close(r.stop)
	r.closeSockets(sockets)
	r.wg.Wait()
	return nil
}

// batchSize is how many packets a port goroutine queues before it sends: one, for it reads one
// at a time.
const batchSize = 1

// portSocket is the socket of one reserved relay port.
type portSocket struct {
	idx   int // port - PortMin
	local netip.AddrPort
	conn  *net.UDPConn
}

// close closes the socket; its goroutine then returns. Safe to call more than once.
func (s *portSocket) close() { _ = s.conn.Close() }

// openPortLocked opens the socket of relay port addr (slot idx) and starts its goroutine.
// Callers hold r.mu.
func (r *Relay) openPortLocked(addr netip.AddrPort, idx int) (*portSocket, error) {
	network := "udp6"
	if addr.Addr().Is4() {
		network = "udp4"
	}
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	sock.RaiseBuffers(c, portRcvBuf, 0)
	s := &portSocket{idx: idx, local: addr, conn: c}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.readPort(s)
	}()
	return s, nil
}

// readPort forwards what arrives on s until s is closed, from when the relay runs.
func (r *Relay) readPort(s *portSocket) {
	select {
	case <-r.run:
	case <-r.stop:
		return
	}
	st := rxState{r: r, c: &r.pc}
	buf := make([]byte, maxPayload+1) // one byte more: a datagram that fills it was cut
	for {
		n, src, err := s.conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // an error an earlier send left on the socket
		}
		st.c.rxPort.Add(1)
		now := r.cfg.Clock()
		st.nowNs, st.sinceBase = now.UnixNano(), int64(now.Sub(r.base))
		st.forward(0, buf, n, n > maxPayload, unmapAddrPort(src), s.local)
		if st.npnd == 0 {
			continue
		}
		p := st.pend[0]
		st.pend[0], st.npnd = pending{}, 0
		if _, err := p.out.sock.conn.WriteToUDPAddrPort(buf[:p.n], p.dst.dst.AddrPort()); err != nil {
			st.c.drops[dropSend].Add(1)
		}
	}
}
