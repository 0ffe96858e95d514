package sock

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Without block, the batch calls never block (MSG_DONTWAIT) and go through RawSyscall6: with
// Syscall6 every batch that took more than sysmon's 20 us tick had its P handed to a new
// thread and back (a futex wake-up and two scheduler passes per batch, about 5% of a
// saturated media worker's CPU in a profile). A caller that loops on them must yield the P
// itself between batches (runtime.Gosched) so that other goroutines still get the CPU. With
// block, they go through Syscall6, which tells the scheduler the thread may wait.

// Recvmmsg reads up to len(msgs) datagrams into the buffers msgs point to and returns how
// many it read, or the error. Without block it returns at once (EAGAIN when nothing waits);
// with block it waits for the first datagram (MSG_WAITFORONE) or the socket's receive
// timeout. The kernel writes each message's length, flags, name and control lengths into
// msgs: reset them before reusing a header.
func Recvmmsg(fd int, msgs []unix.Mmsghdr, block bool) (int, unix.Errno) {
	var n uintptr
	var e unix.Errno
	if block {
		n, _, e = unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
			uintptr(len(msgs)), unix.MSG_WAITFORONE, 0, 0)
	} else {
		n, _, e = unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
			uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
	}
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// Sendmmsg sends msgs and returns how many the kernel took and how many it refused. A message
// the kernel refuses (no route, say) is skipped and counted as failed. Without block it never
// waits: when the send buffer is full (EAGAIN, ENOBUFS) the rest counts as failed, dropped
// rather than stalling every other stream. With block it waits for room.
func Sendmmsg(fd int, msgs []unix.Mmsghdr, block bool) (sent, failed int) {
	for len(msgs) > 0 {
		var n uintptr
		var e unix.Errno
		if block {
			n, _, e = unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
				uintptr(len(msgs)), 0, 0, 0)
		} else {
			n, _, e = unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
				uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
		}
		switch {
		case e == unix.EINTR:
			continue
		case !block && (e == unix.EAGAIN || e == unix.ENOBUFS):
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
