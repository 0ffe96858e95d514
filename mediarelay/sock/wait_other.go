//go:build !unix

package sock

import "net"

// WaitReadable does not wait where the runtime offers no readiness: the reader then waits in
// its read, holding its buffer.
func WaitReadable(*net.UDPConn) error { return nil }
