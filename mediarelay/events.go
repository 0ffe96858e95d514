package mediarelay

import (
	"net/netip"
	"time"
)

// Events receives what the data plane learns about streams, so that the control plane
// (pinhole, through package relay) can show latched peers and release idle streams.
//
// The relay calls these methods from its housekeeping goroutine ([Relay.Run]), one at a time
// and never while holding its own locks, so they may call any Relay method; they delay the
// next sweep while they run, never the packets. A change is reported within one sweep
// interval (at most a quarter of the shorter of the latch window and the idle timeout).
type Events interface {
	// Latched reports that a relay port of leg learned its peer's source (rtcp: the port is a
	// non-muxed leg's RTCP port), or that it changed: the first packet, the SDP address taking
	// over within the learning window, or a relearn after UpdateStream.
	Latched(s *Stream, leg Leg, rtcp bool, peer netip.AddrPort)
	// Idle reports a stream, not on hold, that received no packet on any of its ports for
	// idle (at least [Config.IdleTimeout]). It is reported once per silence; the stream keeps
	// forwarding until it is removed.
	Idle(s *Stream, idle time.Duration)
	// Traffic reports a stream's counters, at most once a sweep and only when a packet arrived
	// on one of its ports since the last report: the control plane learns them without reading
	// every stream.
	Traffic(s *Stream, st StreamStats)
}
