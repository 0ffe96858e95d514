package mediarelay

import (
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// Batch geometry. A slot holds one datagram (up to maxPayload) behind headroom, where the raw
// send scheme writes the UDP header instead of copying the payload (the kernel writes the IP
// header: see package sock).
const (
	batchSize = 64
	headroom  = sock.UDPHeaderLen
	slotSize  = headroom + maxPayload
	ctrlSize  = 64 // one cmsghdr with a sockaddr_in6 (IP(V6)_ORIGDSTADDR)
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
		b.iov[i].SetLen(maxPayload)
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
	t.iov[i].SetLen(len(packet))
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
