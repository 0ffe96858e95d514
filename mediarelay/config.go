package mediarelay

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"time"
)

// Mode chooses how relay ports receive packets.
type Mode uint8

const (
	// ModeAuto uses fan-in when the process may install nftables rules and open transparent
	// sockets (CAP_NET_ADMIN), and falls back to a socket per relay port otherwise, saying so
	// once in the log. With fan-in, it also reads every relay port's own socket, and decides
	// per interface media arrives on whether the fan-in rule applies there: packets that
	// reach the host through a bridge with br_netfilter on are steered by the rule but never
	// reach the fan-in socket, so New probes each bridge a side's media arrives through (see
	// [Side]) and leaves those where the probe does not arrive to the ports' own sockets.
	ModeAuto Mode = iota
	// ModeFanIn requires fan-in: an nftables TPROXY rule steers the whole port range, from
	// every interface, to one transparent socket per worker. New fails when it cannot be set
	// up.
	ModeFanIn
	// ModeFallback reads every relay port from its own socket and needs no privilege.
	ModeFallback
)

func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeFanIn:
		return "fan-in"
	case ModeFallback:
		return "fallback"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// UnmarshalText parses "auto", "fanin" (or "fan-in") or "fallback" (SIPCAR_MEDIA_MODE).
func (m *Mode) UnmarshalText(text []byte) error {
	switch strings.ToLower(strings.TrimSpace(string(text))) {
	case "auto":
		*m = ModeAuto
	case "fanin", "fan-in":
		*m = ModeFanIn
	case "fallback":
		*m = ModeFallback
	default:
		return fmt.Errorf("%q: want auto, fanin or fallback", text)
	}
	return nil
}

// SendScheme chooses how fan-in workers send. Both leave from the relay port of the other leg;
// the fallback mode always sends from the per-port sockets.
type SendScheme uint8

const (
	// SendRaw writes the UDP header in front of each payload, in the receive buffer, and
	// sends a whole batch with one sendmmsg on a raw UDP socket, the source address in an
	// IP_PKTINFO (IPV6_PKTINFO) message per datagram. It needs
	// CAP_NET_RAW; the fastest scheme on the benchmark (integration/bench).
	SendRaw SendScheme = iota
	// SendPerPort sends from the socket bound to each relay port, one sendmmsg per run of
	// packets leaving from the same port.
	SendPerPort
)

func (s SendScheme) String() string {
	switch s {
	case SendRaw:
		return "raw"
	case SendPerPort:
		return "per-port"
	}
	return fmt.Sprintf("SendScheme(%d)", uint8(s))
}

// Side is one side of the relay (sipcar's inside or public side), as ModeAuto needs it to
// find the interfaces the side's media arrives on.
type Side struct {
	// Name names the side in logs and metrics ("inside", "public").
	Name string
	// Addrs are the relay's addresses on this side, where its media is addressed to; the
	// start-up probe sends to one of them.
	Addrs []netip.Addr
	// Peers are the networks the side's media comes from. The interfaces the routes to them
	// leave by are where it arrives. None: anywhere, that is the default route (or, without
	// one, the interfaces that hold Addrs).
	Peers []netip.Prefix
}

// Path is how packets reach the relay: through the fan-in sockets or each relay port's own.
type Path uint8

const (
	PathFanIn   Path = iota // the nftables TPROXY rule steers them to the fan-in sockets
	PathPerPort             // each relay port's own socket receives them
)

func (p Path) String() string {
	if p == PathFanIn {
		return "fan-in"
	}
	return "per-port"
}

// SidePath is the receive path of the media one side's interface delivers, and why.
type SidePath struct {
	Side    string // Side.Name
	Ingress string // the interface the side's media arrives on ("" when none was found)
	Path    Path
	// Reason says why, in a word for the metric's label: not-bridged, probe-fanin,
	// probe-bypassed, probe-lost, probe-failed, mode-fanin, mode-fallback, no-fanin.
	Reason string
	// Detail says it in a sentence, for the log.
	Detail string
}

// Defaults for the zero values of [Config].
const (
	DefaultLatchWindow = 3 * time.Second
	DefaultIdleTimeout = 50 * time.Second
)

// Config configures a [Relay]. The zero value of every field but the port range is usable.
type Config struct {
	// PortMin and PortMax bound the relay port range, inclusive. Every relay port a stream
	// uses lies in it; in fan-in mode the nftables rule steers exactly this range.
	PortMin, PortMax uint16

	Mode Mode
	// FanInSend chooses the send scheme of fan-in workers (default SendRaw). Without
	// CAP_NET_RAW a fan-in relay uses SendPerPort.
	FanInSend SendScheme

	// Kernel chooses whether latched legs are forwarded by the kernel (default KernelOff).
	Kernel KernelMode

	// Sides says where media comes from, for ModeAuto's choice of receive path per side;
	// none: fan-in except from bridges, which nothing probed (see [Relay.Paths]).
	Sides []Side

	// Workers is the number of packet goroutines, one fan-in socket each (default
	// GOMAXPROCS, which follows the CPU affinity of the process).
	Workers int

	// LatchWindow is how long a leg learning its peer keeps accepting the SDP address after it
	// latched on another source (default 3 s). See [LatchLearn].
	LatchWindow time.Duration
	// IdleTimeout is how long a stream that is not on hold may go without a packet before
	// [Events.Idle] reports it (default 50 s).
	IdleTimeout time.Duration

	// Events receives latching and idle reports; nil discards them.
	Events Events
	// NoQuality turns call-quality analysis off: RTP and RTCP are counted (packets, bytes) but
	// neither sequence numbers, jitter, payload types nor RTCP reports are read, and streams
	// report no quality. See [LegQuality].
	NoQuality bool
	// RTCP, when set, receives every RTCP packet a stream's peer sent that the relay accepted
	// (from the latched peer), on the packet path: it must return at once, and copy what it
	// keeps (for HEP export: encode and queue). The relay reads each SR and RR itself.
	RTCP func(*RTCPPacket)
	// Ended, when set, receives each stream [Relay.RemoveStream] removed, once, with its final
	// counters (for quality reports at a call's end). It runs in RemoveStream's caller.
	Ended func(*Stream, StreamStats)
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Clock stamps packet arrivals (jitter, last packet time); default time.Now. Timers (latch
	// window, idle timeout) run on the time package in the relay's housekeeping goroutine.
	Clock func() time.Time

	// sweep, when set, replaces sweepInterval's figure: tests that must tell the sweep from
	// what happens between sweeps set it longer than they run.
	sweep time.Duration
}

func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.PortMin == 0 || c.PortMax < c.PortMin {
		errs = append(errs, fmt.Errorf("relay port range %d-%d: want 1 <= min <= max", c.PortMin, c.PortMax))
	}
	if c.Mode > ModeFallback {
		errs = append(errs, fmt.Errorf("mode %d: unknown", c.Mode))
	}
	if c.Kernel > KernelOn {
		errs = append(errs, fmt.Errorf("kernel mode %d: unknown", c.Kernel))
	}
	if c.FanInSend > SendPerPort {
		errs = append(errs, fmt.Errorf("fan-in send scheme %d: unknown", c.FanInSend))
	}
	if c.Workers < 0 || c.LatchWindow < 0 || c.IdleTimeout < 0 {
		errs = append(errs, errors.New("workers, latch window and idle timeout must not be negative"))
	}
	if len(errs) > 0 {
		return c, errors.Join(errs...)
	}
	if c.Workers == 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	if c.LatchWindow == 0 {
		c.LatchWindow = DefaultLatchWindow
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return c, nil
}

// sweepInterval is how often housekeeping looks at every stream: often enough that latch
// windows and idle timeouts end within a quarter of the shorter one, at most once a second.
func (c Config) sweepInterval() time.Duration {
	if c.sweep > 0 {
		return c.sweep
	}
	d := min(c.LatchWindow, c.IdleTimeout) / 4
	return max(min(d, time.Second), time.Millisecond)
}
