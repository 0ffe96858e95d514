//go:build !linux

package sock

import "net"

// RaiseBuffers raises c's receive buffer to rcv bytes and its send buffer to snd (0 leaves one
// as it is), as far as the system allows; failures leave the defaults, which work.
func RaiseBuffers(c *net.UDPConn, rcv, snd int) {
	if rcv > 0 {
		_ = c.SetReadBuffer(rcv)
	}
	if snd > 0 {
		_ = c.SetWriteBuffer(snd)
	}
}
