//go:build unix

package relay

import (
	"net"

	"golang.org/x/sys/unix"
)

// waitReadable blocks until a datagram waits on c, without a buffer: a reader that waits holds
// none, so ten thousand idle bindings cost their goroutines, not ten thousand 64 KB buffers.
// It returns the error that ends the wait (net.ErrClosed when c is closed).
func waitReadable(c *net.UDPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	err = raw.Read(func(fd uintptr) bool {
		// A zero-length peek: EAGAIN while nothing waits (the runtime then waits for the socket
		// to become readable and asks again), success or another error once something is there.
		_, _, werr = unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return werr != unix.EAGAIN && werr != unix.EWOULDBLOCK
	})
	if err != nil {
		return err
	}
	return nil // an error the peek saw (an ICMP error) surfaces again in the read that follows
}
