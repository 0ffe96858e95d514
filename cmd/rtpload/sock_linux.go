package main

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// openRaw opens the send-only socket every stream is sent from: a raw UDP socket (see package
// sock), so that one socket sends from any endpoint's address and port through the route
// cache. rtpload writes the UDP header and names the source in a control message. It blocks
// when its buffer is full: flat-out, the kernel sets the pace.
func openRaw(v4 bool) (int, error) {
	fd, err := sock.OpenRaw(v4, false)
	if err != nil {
		return -1, fmt.Errorf("%w (needs CAP_NET_RAW, CAP_NET_ADMIN)", err)
	}
	sock.SetBuffers(fd, 0, 8<<20)
	return fd, nil
}

// openFanIn opens the transparent socket the nftables rule steers every endpoint port to.
// Reads time out every 50 ms so the receiver notices when to stop.
func openFanIn(v4 bool) (int, uint16, error) {
	fd, port, err := sock.OpenFanIn(v4, false, 0)
	if err != nil {
		return -1, 0, err
	}
	sock.SetBuffers(fd, 16<<20, 0)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50_000}); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("fan-in socket: SO_RCVTIMEO: %w", err)
	}
	return fd, port, nil
}
