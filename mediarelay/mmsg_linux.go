package mediarelay

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batch geometry. A slot holds one datagram behind headroom for the raw send scheme's
// headers; RTP is far smaller than a slot, and a datagram that does not fit is dropped as
// truncated rather than forwarded cut.
const (
	batchSize  = 64
	slotSize   = 2048
	maxPayload = slotSize - headroom
	ctrlSize   = 64 // one cmsghdr with a sockaddr_in6 (IP(V6)_ORIGDSTADDR)
)

// rxBatch is the receive side of a worker: the slots, and the recvmmsg headers pointing into
// them, built once so that a receive allocates nothing.
type rxBatch struct {
	buf   []byte
	iov   [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6
	ctrl  [batchSize][ctrlSize]byte
	msgs  [batchSize]unix.Mmsghdr
}

func newRxBatch() *rxBatch {
	b := &rxBatch{buf: make([]byte, batchSize*slotSize)}
	for i := range b.msgs {
		b.iov[i].Base = &b.buf[i*slotSize+headroom]
		b.msgs[i].Hdr.Iov = &b.iov[i]
		b.msgs[i].Hdr.Iovlen = 1
		b.msgs[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
	}
	return b
}

// prepare resets the lengths the kernel overwrote in slots [from, to).
func (b *rxBatch) prepare(from, to int, withCtrl bool) {
	for i := from; i < to; i++ {
		h := &b.msgs[i].Hdr
		b.iov[i].Len = maxPayload
		h.Namelen = unix.SizeofSockaddrInet6
		h.Flags = 0
		if withCtrl {
			h.Control = &b.ctrl[i][0]
			h.Controllen = ctrlSize
		} else {
			h.Control = nil
			h.Controllen = 0
		}
	}
}

func (b *rxBatch) slot(i int) []byte { return b.buf[i*slotSize : (i+1)*slotSize] }

// txBatch holds the sendmmsg headers of one flush; its iovecs point into rxBatch slots.
type txBatch struct {
	iov   [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6
	msgs  [batchSize]unix.Mmsghdr
}

// set fills message i; ctrl, when not empty, is an immutable control message the header
// points to (not copied).
func (t *txBatch) set(i int, packet []byte, name *unix.RawSockaddrInet6, nameLen uint32, ctrl []byte) {
	t.iov[i].Base = &packet[0]
	t.iov[i].Len = uint64(len(packet))
	t.names[i] = *name
	h := &t.msgs[i].Hdr
	h.Name = (*byte)(unsafe.Pointer(&t.names[i]))
	h.Namelen = nameLen
	h.Iov = &t.iov[i]
	h.Iovlen = 1
	h.Control, h.Controllen = nil, 0
	if len(ctrl) > 0 {
		h.Control = &ctrl[0]
		h.SetControllen(len(ctrl))
	}
}

// The batch calls never block (MSG_DONTWAIT on non-blocking sockets), so they go through
// RawSyscall6: with Syscall6 every batch that took more than sysmon's 20 us tick had its P
// handed to a new thread and back (a futex wake-up and two scheduler passes per batch, about
// 5% of a saturated worker's CPU in a profile). The worker yields between batches instead
// (worker.run), so the SIP goroutines still get the CPU within one batch.

// recvmmsg reads up to len(msgs) datagrams without blocking.
func recvmmsg(fd int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
		uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// sendmmsg sends msgs without blocking and returns how many went out; a message the kernel
// refuses (no route, full buffer) is skipped and counted as failed.
func sendmmsg(fd int, msgs []unix.Mmsghdr) (sent, failed int) {
	for len(msgs) > 0 {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
			uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN || e == unix.ENOBUFS:
			// The send buffer is full: drop the rest rather than stall every other stream.
			return sent, failed + len(msgs)
		case e != 0:
			failed++
			msgs = msgs[1:]
		case n == 0:
			return sent, failed + len(msgs)
		default:
			sent += int(n)
			msgs = msgs[n:]
		}
	}
	return sent, failed
}
