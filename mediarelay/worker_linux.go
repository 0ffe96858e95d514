package mediarelay

import (
	"fmt"
	"net/netip"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// What an epoll event's data (EpollEvent.Pad) names.
const (
	evWake  = iota + 1 // the relay's eventfd: stop
	evFanIn            // a fan-in socket; Fd is the descriptor
	evPort             // a relay port's socket (fallback mode); Fd is the port's slot
)

// worker is one packet goroutine: its own epoll set, fan-in sockets, raw sockets and batch
// buffers. Nothing in it is shared with other workers but the counters, which are atomic.
type worker struct {
	epfd   int
	fanIn  [2]int // per family (0 IPv4, 1 IPv6), -1 when absent
	raw    [2]int
	events [batchSize]unix.EpollEvent

	rx  *rxBatch
	nrx int // slots in use since the last flush
	tx  txBatch

	rxState // its relay (w.r); its time is the batch's; pend holds the batch's packets until the flush
	packetCounters
}

func newWorker(r *Relay) (*worker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	w := &worker{epfd: epfd, fanIn: [2]int{-1, -1}, raw: [2]int{-1, -1}, rx: newRxBatch()}
	w.r, w.c = r, &w.packetCounters
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Pad: evWake}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, r.wake, &ev); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	return w, nil
}

func (w *worker) addFanIn(fd, fam int) error {
	w.fanIn[fam] = fd
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd), Pad: evFanIn}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	return nil
}

func (w *worker) openRaw() error {
	for fam, v4 := range []bool{true, false} {
		if w.fanIn[fam] < 0 {
			continue
		}
		fd, err := sock.OpenRaw(v4, true)
		if err != nil {
			return err
		}
		sock.SetBuffers(fd, 0, sendBuf)
		w.raw[fam] = fd
	}
	return nil
}

func (w *worker) closeFanIn() {
	for fam := range 2 {
		for _, fd := range []*int{&w.fanIn[fam], &w.raw[fam]} {
			if *fd >= 0 {
				unix.Close(*fd)
				*fd = -1
			}
		}
	}
}

func (w *worker) close() {
	w.closeFanIn()
	unix.Close(w.epfd)
}

// run reads, forwards and sends until the relay's eventfd becomes readable.
func (w *worker) run() {
	for {
		n, err := unix.EpollWait(w.epfd, w.events[:], -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			w.r.log.Error("mediarelay: epoll_wait failed; worker stops", "err", err)
			return
		}
		w.stamp()
		for i := range n {
			ev := &w.events[i]
			switch ev.Pad {
			case evWake:
				w.flush()
				return
			case evFanIn:
				w.readFanIn(int(ev.Fd))
			case evPort:
				w.readPort(int(ev.Fd))
			}
		}
		w.flush()
		runtime.Gosched() // the batch calls do not give the P up (see sock.Recvmmsg)
	}
}

func (w *worker) stamp() {
	now := w.r.cfg.Clock()
	w.nowNs = now.UnixNano()
	w.sinceBase = int64(now.Sub(w.r.base))
}

// room makes at least want free slots, flushing if needed, and returns the first free one.
func (w *worker) room(want int) int {
	if batchSize-w.nrx < want {
		w.flush()
	}
	return w.nrx
}

func (w *worker) readFanIn(fd int) {
	from := w.room(batchSize / 2)
	w.rx.prepare(from, batchSize, true)
	n, e := sock.Recvmmsg(fd, w.rx.msgs[from:], false)
	if e != 0 {
		return // EAGAIN: another event raced us; anything else shows up again
	}
	w.rxFanIn.Add(uint64(n))
	for i := from; i < from+n; i++ {
		h := &w.rx.msgs[i]
		src := sock.AddrPortOf(&w.rx.names[i])
		dst := sock.OrigDst(w.rx.ctrl[i][:h.Hdr.Controllen])
		w.handle(i, int(h.Len), h.Hdr.Flags, src, dst)
	}
	w.nrx = from + n
}

func (w *worker) readPort(idx int) {
	if idx < 0 || idx >= len(w.r.ports) {
		return
	}
	s := w.r.ports[idx].sock.Load()
	if s == nil || !s.acquire() {
		return // released since epoll_wait
	}
	from := w.room(1)
	w.rx.prepare(from, batchSize, false)
	n, e := sock.Recvmmsg(s.fd, w.rx.msgs[from:], false)
	s.release()
	if e != 0 {
		return
	}
	w.rxPort.Add(uint64(n))
	for i := from; i < from+n; i++ {
		h := &w.rx.msgs[i]
		w.handle(i, int(h.Len), h.Hdr.Flags, sock.AddrPortOf(&w.rx.names[i]), s.local)
	}
	w.nrx = from + n
}

// handle processes the packet in slot i, n bytes from src to the relay address dst, and queues
// it for the flush unless it is dropped (see rxState.forward). The per-packet path: it
// allocates nothing, and it inlines into the loops that call it (go build -gcflags=-m says
// so), so that a packet costs one call into forward, as when this was all one function.
func (w *worker) handle(i, n int, flags int32, src, dst netip.AddrPort) {
	w.forward(i, w.rx.buf[i*slotSize+headroom:], n, flags&unix.MSG_TRUNC != 0, src, dst)
}

// flush sends every pending packet and frees the slots.
func (w *worker) flush() {
	if w.npnd > 0 {
		if w.r.fanIn && w.r.raw {
			w.flushRaw()
		} else {
			w.flushPerPort()
		}
	}
	for i := range w.npnd {
		w.pend[i] = pending{}
	}
	w.npnd, w.nrx = 0, 0
}

// flushRaw writes the UDP header in front of each payload and sends each family's packets
// with one sendmmsg on the worker's raw socket, each naming its relay address as source.
func (w *worker) flushRaw() {
	for fam, v4 := range []bool{true, false} {
		k := 0
		for i := range w.npnd {
			p := &w.pend[i]
			if p.dst.dst.Is4() != v4 {
				continue
			}
			dgram := w.rx.slot(int(p.slot))[headroom-sock.UDPHeaderLen : headroom+int(p.n)]
			from := p.out.sock
			sock.PutUDPHeader(dgram, &from.localSA, &p.dst.dst)
			name, nameLen := p.dst.dst.RawName()
			w.tx.set(k, dgram, &name, nameLen, from.srcInfo[:from.srcLen])
			k++
		}
		if k > 0 {
			w.send(w.raw[fam], k)
		}
	}
}

// flushPerPort sends each run of packets leaving from the same relay port with one sendmmsg
// on that port's socket. Sorting by port (stable, so a stream keeps its order) groups them.
func (w *worker) flushPerPort() {
	pend := w.pend[:w.npnd]
	for i := 1; i < len(pend); i++ {
		for j := i; j > 0 && pend[j].out.sock.idx < pend[j-1].out.sock.idx; j-- {
			pend[j], pend[j-1] = pend[j-1], pend[j]
		}
	}
	for i := 0; i < len(pend); {
		s := pend[i].out.sock
		j := i
		for j < len(pend) && pend[j].out.sock == s {
			p := &pend[j]
			slot := w.rx.slot(int(p.slot))
			name, nameLen := p.dst.dst.Name()
			w.tx.set(j-i, slot[headroom:headroom+int(p.n)], &name, nameLen, nil)
			j++
		}
		if s.acquire() {
			w.send(s.fd, j-i)
			s.release()
		} else {
			w.drops[dropSend].Add(uint64(j - i))
		}
		i = j
	}
}

func (w *worker) send(fd, k int) {
	_, failed := sock.Sendmmsg(fd, w.tx.msgs[:k], false)
	if failed > 0 {
		w.drops[dropSend].Add(uint64(failed))
	}
}
