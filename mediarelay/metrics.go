package mediarelay

// The relay-wide counters live with the packet goroutines (packetCounters: atomic, one set per
// goroutine so that the packet path never shares a cache line with another worker) and are
// summed on demand, for the session table and for the Prometheus [Collector].

// Drop reasons, as they appear in [Counters].
const (
	DropUnknownPort = "unknown_port" // no stream on the port, or addressed to another address
	DropBleed       = "bleed"        // not from the latched (strict: the SDP) peer
	DropNoPeer      = "no_peer"      // the other leg's peer is not known yet
	DropTruncated   = "truncated"    // larger than the relay's buffers
	DropSend        = "send_error"   // the kernel refused to send it
)

// Counters is a snapshot of the relay-wide packet counters.
type Counters struct {
	Forwarded uint64            // packets sent to the other leg
	Dropped   map[string]uint64 // packets not relayed, by reason (Drop*)
	// Received counts the packets read, by the path they came by: PathFanIn (the fan-in
	// sockets) and PathPerPort (the relay ports' own sockets).
	Received [2]uint64
	// Kernel counts the packets the kernel fast path forwarded (part of Forwarded; they are
	// not in Received).
	Kernel uint64
}

// Counters sums the packet goroutines' counters. Safe to call at any time.
func (r *Relay) Counters() Counters {
	c := Counters{Dropped: make(map[string]uint64, numDrops)}
	for _, w := range r.counters {
		c.Forwarded += w.queued.Load()
		for i := range numDrops {
			c.Dropped[dropReasons[i]] += w.drops[i].Load()
		}
		c.Forwarded -= w.drops[dropSend].Load()
		c.Received[PathFanIn] += w.rxFanIn.Load()
		c.Received[PathPerPort] += w.rxPort.Load()
	}
	c.Kernel = r.kernelForwarded()
	c.Forwarded += c.Kernel
	return c
}
