package mediarelay

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// What an epoll event's data (EpollEvent.Pad) names.
const (
	evWake  = iota + 1 // the relay's eventfd: stop
	evFanIn            // a fan-in socket; Fd is the descriptor
	evPort             // a relay port's socket (fallback mode); Fd is the port's slot
)

// Why a packet was dropped; indexes of worker.drops and label values of the metric.
const (
	dropUnknownPort = iota // no stream on the port, or addressed to another address
	dropBleed              // not from the latched (or, strict, the SDP) peer
	dropNoPeer             // the other leg's peer is not known yet
	dropTruncated          // larger than a slot
	dropSend               // the kernel refused to send it
	numDrops
)

var dropReasons = [numDrops]string{DropUnknownPort, DropBleed, DropNoPeer, DropTruncated, DropSend}

// worker is one packet goroutine: its own epoll set, fan-in sockets, raw sockets and batch
// buffers. Nothing in it is shared with other workers but the counters, which are atomic.
type worker struct {
	r      *Relay
	epfd   int
	fanIn  [2]int // per family (0 IPv4, 1 IPv6), -1 when absent
	raw    [2]int
	events [batchSize]unix.EpollEvent

	rx   *rxBatch
	nrx  int // slots in use since the last flush
	pend [batchSize]pending
	npnd int
	tx   txBatch

	nowNs     int64 // the batch's arrival time, unix nanoseconds
	sinceBase int64 // the same, since Relay.base

	queued atomic.Uint64 // packets handed to flush; those the kernel refused count in drops too
	drops  [numDrops]atomic.Uint64
	// Packets read from fan-in sockets and from the ports' own, whatever became of them.
	rxFanIn, rxPort atomic.Uint64

	q workerQuality // quality_linux.go
}

// pending is a packet processed and waiting for the flush.
type pending struct {
	slot int32
	n    int32
	out  *endpoint  // the endpoint it leaves from
	dst  *peerState // where it goes
}

func newWorker(r *Relay) (*worker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	w := &worker{r: r, epfd: epfd, fanIn: [2]int{-1, -1}, raw: [2]int{-1, -1}, rx: newRxBatch()}
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
		fd, err := openRaw(v4)
		if err != nil {
			return err
		}
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
		runtime.Gosched() // the batch calls do not give the P up (see recvmmsg)
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
	n, e := recvmmsg(fd, w.rx.msgs[from:])
	if e != 0 {
		return // EAGAIN: another event raced us; anything else shows up again
	}
	w.rxFanIn.Add(uint64(n))
	for i := from; i < from+n; i++ {
		h := &w.rx.msgs[i]
		src := addrPortFromRaw(unsafe.Pointer(&w.rx.names[i]))
		dst := origDst(w.rx.ctrl[i][:h.Hdr.Controllen])
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
	n, e := recvmmsg(s.fd, w.rx.msgs[from:])
	s.release()
	if e != 0 {
		return
	}
	w.rxPort.Add(uint64(n))
	for i := from; i < from+n; i++ {
		h := &w.rx.msgs[i]
		w.handle(i, int(h.Len), h.Hdr.Flags, addrPortFromRaw(unsafe.Pointer(&w.rx.names[i])), s.local)
	}
	w.nrx = from + n
}

// handle processes the packet in slot i, n bytes from src to the relay address dst: it finds
// the endpoint, applies latching, counts, and queues the packet for the other leg. This is
// the per-packet path: it allocates nothing (latching aside, once per stream).
func (w *worker) handle(i, n int, flags int32, src, dst netip.AddrPort) {
	if flags&unix.MSG_TRUNC != 0 || n > maxPayload {
		w.drops[dropTruncated].Add(1)
		return
	}
	r := w.r
	idx := int(dst.Port()) - int(r.cfg.PortMin)
	if idx < 0 || idx >= len(r.ports) {
		w.drops[dropUnknownPort].Add(1)
		return
	}
	slot := &r.ports[idx]
	e := slot.ep.Load()
	if sh := slot.shared.Load(); sh != nil {
		e = pickShared(*sh, src)
	}
	if e == nil || e.local.Addr() != dst.Addr() {
		w.drops[dropUnknownPort].Add(1)
		return
	}
	payload := w.rx.buf[i*slotSize+headroom : i*slotSize+headroom+n]
	rtcp := e.rtcp || (e.mux && n >= 2 && payload[1] >= 200 && payload[1] <= 207)
	if !e.accept(src, w.nowNs, int64(r.cfg.LatchWindow)) {
		e.rx.bleedPacket()
		w.drops[dropBleed].Add(1)
		return
	}
	out := e.outRTP
	if rtcp {
		out = e.outRTCP
		e.rx.rtcpPacket(n, w.nowNs)
		w.rtcpPacket(e, src, dst, payload)
	} else if n >= 12 && payload[0]>>6 == 2 && !r.cfg.NoQuality {
		w.rtpPacket(e, n, payload)
	} else {
		e.rx.otherPacket(n, w.nowNs)
	}
	p := out.peer.Load()
	if p.dst.nameLen == 0 {
		w.drops[dropNoPeer].Add(1)
		return
	}
	out.sent.add(n)
	w.queued.Add(1)
	w.pend[w.npnd] = pending{slot: int32(i), n: int32(n), out: out, dst: p}
	w.npnd++
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
			if p.dst.dst.v4 != v4 {
				continue
			}
			slot := w.rx.slot(int(p.slot))
			sock := p.out.sock
			start := putUDPHeader(slot, int(p.n), &sock.localSA, &p.dst.dst)
			var name unix.RawSockaddrInet6
			p.dst.dst.rawName(&name)
			w.tx.set(k, slot[start:headroom+int(p.n)], &name, p.dst.dst.nameLen, sock.srcInfo[:sock.srcLen])
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
			w.tx.set(j-i, slot[headroom:headroom+int(p.n)], &p.dst.dst.name, p.dst.dst.nameLen, nil)
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
	_, failed := sendmmsg(fd, w.tx.msgs[:k])
	if failed > 0 {
		w.drops[dropSend].Add(uint64(failed))
	}
}
