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
	perSource int
	exempt    netip.Addr // never capped per source (the upstream, which connects for every phone)

	mu       sync.Mutex // guards the following
	max      int        // the total cap; lowered to fit the descriptor limit (fitDescriptors)
	open     int
	bySource map[netip.Addr]int
}

func newConnLimits(max, perSource int, exempt netip.Addr) *connLimits {
	return &connLimits{max: max, perSource: perSource, exempt: exempt, bySource: make(map[netip.Addr]int)}
}

// take reserves a place for a connection from src (zero for one sipcar dials). It returns ""
// when the connection may open, else which cap refused it: "total" or "per-source".
func (l *connLimits) take(src netip.Addr) string {
	src = src.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.open >= l.max {
		return "total"
	}
	if src.IsValid() && src != l.exempt && l.perSource > 0 && l.bySource[src] >= l.perSource {
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

// fitDescriptors lowers the total cap so that connections leave reserve descriptors free of
// limit, and returns the cap in force (0: none).
func (l *connLimits) fitDescriptors(limit, reserve int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if limit > 0 {
		fit := max(limit-reserve, 16)
		if l.max <= 0 || l.max > fit {
			l.max = fit
		}
	}
	return l.max
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
