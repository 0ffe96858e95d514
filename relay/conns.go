package relay

import (
	"net/netip"
	"sync"
)

// connLimits caps the TCP and TLS connections open at once, in total and per source address, so
// that idle or trickling connections cannot take the file descriptors that UDP, the calls in
// progress and the admin endpoint need. Every connection takes a place when it opens (accepted
// or dialed) and gives it back when it closes. Connections sipcar dials count in the total only:
// their peer did not ask for them.
type connLimits struct {
	max, perSource int
	exempt         netip.Addr // never capped per source (the upstream, which connects for every phone)

	mu       sync.Mutex // guards the following
	open     int
	bySource map[netip.Addr]int
}

func newConnLimits(max, perSource int, exempt netip.Addr) *connLimits {
	return &connLimits{max: max, perSource: perSource, exempt: exempt, bySource: make(map[netip.Addr]int)}
}

// take reserves a place for a connection from src (zero for one sipcar dials) when no more than
// room connections may be open for want of descriptors (negative: no such bound). It returns ""
// when the connection may open, else which bound refused it: "descriptors", "total" or
// "per-source".
func (l *connLimits) take(src netip.Addr, room int) string {
	src = src.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case room >= 0 && l.open >= room:
		return "descriptors"
	case l.max > 0 && l.open >= l.max:
		return "total"
	case src.IsValid() && src != l.exempt && l.perSource > 0 && l.bySource[src] >= l.perSource:
		return "per-source"
	}
	l.open++
	if src.IsValid() {
		l.bySource[src]++
	}
	return ""
}

// give returns the place of a connection from src that closed.
func (l *connLimits) give(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	decrementCount(l.bySource, src.Unmap())
}

// descriptorMargin is what the descriptors of connections always leave free beside the ports'
// sockets: listeners, the admin endpoint and its clients, the media relay's fan-in sockets,
// connections being dialed, log files.
const descriptorMargin = 256

// connectionRoom returns how many TCP and TLS connections the process's descriptors leave room
// for now: the limit less a socket for every signalling port in use, one for every media port in
// use when each has its own (not with fan-in), and a margin; negative when the limit is unknown.
// Connections are refused before they take the descriptors that a binding of a new call, or the
// admin endpoint, will need.
func (r *Relay) connectionRoom() int {
	if r.fdLimit <= 0 {
		return -1
	}
	media, signaling := r.m.PortsInUse()
	used := signaling + descriptorMargin
	if !r.media.FanIn() {
		used += media
	}
	return max(r.fdLimit-used, 0)
}

// decrementCount takes one from a count, deleting it at zero; the zero Addr is not counted.
func decrementCount(counts map[netip.Addr]int, a netip.Addr) {
	if !a.IsValid() {
		return
	}
	if n := counts[a] - 1; n > 0 {
		counts[a] = n
	} else {
		delete(counts, a)
	}
}
