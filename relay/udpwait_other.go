//go:build !unix

package relay

import "net"

// waitReadable does not wait where the runtime offers no readiness: the reader then waits in its
// read, holding its buffer.
func waitReadable(*net.UDPConn) error { return nil }
