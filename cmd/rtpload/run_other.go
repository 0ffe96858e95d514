//go:build !linux

package main

import (
	"errors"
	"fmt"
)

// run fails outside Linux: rtpload sends through a raw socket and receives through TPROXY and
// nftables.
func run(options) error {
	return fmt.Errorf("rtpload needs Linux (raw sockets, TPROXY, nftables): %w", errors.ErrUnsupported)
}
