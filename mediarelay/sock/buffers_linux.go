package sock

import (
	"net"

	"golang.org/x/sys/unix"
)

// SetBuffers raises fd's receive buffer to rcv bytes and its send buffer to snd (0 leaves one
// as it is), beyond net.core.rmem_max and wmem_max when the process may (SO_RCVBUFFORCE,
// SO_SNDBUFFORCE, CAP_NET_ADMIN). Failures leave the defaults, which work, only with less room
// for bursts.
func SetBuffers(fd, rcv, snd int) {
	if rcv > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcv) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcv)
		}
	}
	if snd > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, snd) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, snd)
		}
	}
}

// RaiseBuffers does what [SetBuffers] does, for c.
func RaiseBuffers(c *net.UDPConn, rcv, snd int) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) { SetBuffers(int(fd), rcv, snd) })
}
