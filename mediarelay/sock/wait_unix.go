//go:build unix

package sock

import (
	"net"

	"golang.org/x/sys/unix"
)

// WaitReadable blocks until a datagram waits on c, without a buffer: a reader that waits holds
// none, so ten thousand idle sockets cost their goroutines, not ten thousand 64 KB buffers.
// It returns the error that ends the wait (net.ErrClosed when c is closed); an error the
// socket reports (an ICMP error) surfaces again in the read that follows, not here.
func WaitReadable(c *net.UDPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Read(func(fd uintptr) bool {
		// A zero-length peek: EAGAIN while nothing waits (the runtime then waits for the socket
		// to become readable and asks again), success or another error once something is there.
		_, _, err := unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return err != unix.EAGAIN && err != unix.EWOULDBLOCK
	})
}
