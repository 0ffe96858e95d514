//go:build !linux

package mediarelay

import "testing"

// isolate does nothing outside Linux: the relay there opens only the ports' sockets.
func isolate(*testing.T) {}
