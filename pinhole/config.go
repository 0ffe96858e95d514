package pinhole

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults applied by [New] to the zero fields of a [Config]. The lifetimes are those of the
// source documents' server map.
const (
	DefaultSignalingLifetime = 2 * time.Minute  // a sip binding after its last message
	DefaultRegisterMargin    = 30 * time.Second // added to a registration's expiry
	DefaultMediaSetup        = 50 * time.Second // a media stream until its first packet
	DefaultMediaIdle         = 60 * time.Second // a media stream after its last packet
	DefaultMaxCallsPerSource = 100
	// A video call with content sharing has four or five streams; an offer of dozens is an
	// attack on the port range.
	DefaultMaxStreamsPerCall = 10
	// A tenth of the default media range: a hundred two-stream calls from one address.
	DefaultMaxPortsPerSource = 1000
	// An office of phones behind one NAT needs one a phone; a scanner naming thousands of
	// Contacts needs none.
	DefaultMaxBindingsPerSource = 200
)

// Default port ranges, documented at [Config].
var (
	defaultMediaPorts     = PortRange{First: 20000, Last: 29999}
	defaultSignalingPorts = PortRange{First: 40000, Last: 49999}
)

// Addrs is sipcar's own address on one side, per family. At least one must be set; a binding
// takes the address of the family of the address it stands for, or the other one when the side
// has no address of that family.
type Addrs struct {
	IPv4 netip.Addr
	IPv6 netip.Addr
}

// pick returns the address to use for a binding that stands for an address of orig's family.
func (a Addrs) pick(orig netip.Addr) netip.Addr {
	if orig.Unmap().Is4() {
		if a.IPv4.IsValid() {
			return a.IPv4
		}
		return a.IPv6
	}
	if a.IPv6.IsValid() {
		return a.IPv6
	}
	return a.IPv4
}

func (a Addrs) has(addr netip.Addr) bool {
	addr = addr.Unmap()
	return addr.IsValid() && (addr == a.IPv4 || addr == a.IPv6)
}

func (a Addrs) validate(name string) error {
	if !a.IPv4.IsValid() && !a.IPv6.IsValid() {
		return fmt.Errorf("%s: no address", name)
	}
	if a.IPv4.IsValid() && !a.IPv4.Is4() {
		return fmt.Errorf("%s: IPv4 address %v is not IPv4", name, a.IPv4)
	}
	if a.IPv6.IsValid() && (!a.IPv6.Is6() || a.IPv6.Is4In6()) {
		return fmt.Errorf("%s: IPv6 address %v is not IPv6", name, a.IPv6)
	}
	return nil
}

// PortRange is an inclusive range of ports, written "20000-29999".
type PortRange struct {
	First, Last uint16
}

func (r PortRange) String() string {
	return strconv.Itoa(int(r.First)) + "-" + strconv.Itoa(int(r.Last))
}

// Len returns the number of ports in the range.
func (r PortRange) Len() int {
	if r.First == 0 || r.Last < r.First {
		return 0
	}
	return int(r.Last) - int(r.First) + 1
}

// Contains reports whether port is in the range.
func (r PortRange) Contains(port uint16) bool {
	return r.Len() > 0 && port >= r.First && port <= r.Last
}

// MarshalText writes the range as "first-last".
func (r PortRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses "first-last" (a single port "first" is a range of one).
func (r *PortRange) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	first, last, found := strings.Cut(s, "-")
	if !found {
		last = first
	}
	f, err := strconv.ParseUint(strings.TrimSpace(first), 10, 16)
	if err != nil {
		return fmt.Errorf("port range %q: first port: %w", s, err)
	}
	l, err := strconv.ParseUint(strings.TrimSpace(last), 10, 16)
	if err != nil {
		return fmt.Errorf("port range %q: last port: %w", s, err)
	}
	pr := PortRange{First: uint16(f), Last: uint16(l)}
	if pr.Len() == 0 {
		return fmt.Errorf("port range %q: want 1 <= first <= last <= 65535", s)
	}
	*r = pr
	return nil
}

func (r PortRange) overlaps(o PortRange) bool {
	return r.Len() > 0 && o.Len() > 0 && r.First <= o.Last && o.First <= r.Last
}

// Config configures a [Map]. Zero durations, ranges and limits take the defaults above.
type Config struct {
	// Inside is sipcar's inside-facing address, Public its public address: the addresses
	// bindings facing that side are given.
	Inside, Public Addrs

	// MediaPorts is the relay port range media pairs are drawn from (SIPCAR_RTP_PORTS, default
	// 20000-29999), in pairs of an even RTP port and RTCP one above it. SignalingPorts is the range
	// of sip bindings (default 40000-49999).
	// The two must not overlap. A port is in use on at most one side at a time, so a port alone
	// names its binding.
	MediaPorts, SignalingPorts PortRange

	// SignalingLifetime is how long a sip binding lives after its last message;
	// RegisterMargin is added to a registration's expiry (see [Map.Registered]).
	SignalingLifetime, RegisterMargin time.Duration
	// MediaSetup is how long a media stream lives until its first packet (counted from the last
	// signaling of its call that touched it), MediaIdle how long after its last packet. A held
	// stream (sendonly, recvonly, inactive) does not expire while its call lives.
	MediaSetup, MediaIdle time.Duration

	// MaxCalls caps the calls holding media pairs in total; 0 means no cap beyond the port range.
	// MaxCallsPerSource caps them per source address (the address that sent the call's first
	// message); 0 means DefaultMaxCallsPerSource, a negative value no cap.
	MaxCalls, MaxCallsPerSource int
	// MaxStreamsPerCall caps the media streams (m= lines relayed) of one call; MaxPortsPerSource
	// the relay ports the calls of one source hold (two per pair, the pairs reserved for answers
	// included); MaxBindingsPerSource the sip bindings the messages of one source made. 0 means
	// the Default below, a negative value no cap.
	MaxStreamsPerCall, MaxPortsPerSource, MaxBindingsPerSource int

	// ReserveAnswerPair makes the offer that starts a stream reserve the pair of its first answer
	// too ([Map.AnswerPair]), so that media the answerer sends before its answer reached sipcar
	// can be relayed. A call then needs its two pairs when the offer comes.
	ReserveAnswerPair bool

	// ReserveMedia holds each media port (RTP and RTCP, "udp") until its binding is released;
	// ReserveSignaling each sip binding's port ("udp" for UDP, "tcp" for TCP, TLS and WebSocket).
	// They are called with the binding's own address. Both are required: the relay passes the
	// media relay's port sockets and its SIP transport's bindings, tests pass fakes.
	ReserveMedia, ReserveSignaling ReserveFunc

	// OnRelease, when set, is told of every binding released, with the reason. It is called
	// without locks held, after the binding's reservation is closed and its port returned, from
	// the goroutine that released it ([Map.Run] for expiry); it may call the Map's methods but
	// should not block.
	OnRelease func(b *Binding, r Reason)

	// OnChange, when set, is told that a call's media pairs or a sip binding changed in a way a
	// replica of the server map needs to know (made, released, registered, latched, held,
	// ringing): it names what, and the replica reads it back later ([Map.ExportCall],
	// [Map.ExportSignaling]). It is called with the Map's lock held, and from the goroutine
	// that latches a media binding's peer: it must not block nor call the Map. What Close
	// releases is not reported: sipcar going away does not end the calls a standby takes over.
	OnChange func(Change)

	// Registerer receives the Map's metrics; nil registers none.
	Registerer prometheus.Registerer

	// Rand, when set, picks free ports instead of the runtime's random source. The Map uses it
	// under its own lock. Tests set it to get fixed ports; production leaves it nil.
	Rand *rand.Rand
}

func (c Config) withDefaults() (Config, error) {
	set := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	set(&c.SignalingLifetime, DefaultSignalingLifetime)
	set(&c.RegisterMargin, DefaultRegisterMargin)
	set(&c.MediaSetup, DefaultMediaSetup)
	set(&c.MediaIdle, DefaultMediaIdle)
	if c.MediaPorts == (PortRange{}) {
		c.MediaPorts = defaultMediaPorts
	}
	if c.SignalingPorts == (PortRange{}) {
		c.SignalingPorts = defaultSignalingPorts
	}
	for _, l := range []struct {
		v   *int
		def int
	}{
		{&c.MaxCallsPerSource, DefaultMaxCallsPerSource},
		{&c.MaxStreamsPerCall, DefaultMaxStreamsPerCall},
		{&c.MaxPortsPerSource, DefaultMaxPortsPerSource},
		{&c.MaxBindingsPerSource, DefaultMaxBindingsPerSource},
	} {
		if *l.v == 0 {
			*l.v = l.def
		}
	}
	c.Inside.IPv4, c.Public.IPv4 = c.Inside.IPv4.Unmap(), c.Public.IPv4.Unmap()

	var errs []error
	if c.ReserveMedia == nil {
		errs = append(errs, errors.New("reserve media: no ReserveFunc"))
	}
	if c.ReserveSignaling == nil {
		errs = append(errs, errors.New("reserve signaling: no ReserveFunc"))
	}
	if err := c.Inside.validate("inside address"); err != nil {
		errs = append(errs, err)
	}
	if err := c.Public.validate("public address"); err != nil {
		errs = append(errs, err)
	}
	if c.MediaPorts.Len() == 0 {
		errs = append(errs, fmt.Errorf("media ports %v: empty range", c.MediaPorts))
	} else if mediaSlots(c.MediaPorts) == 0 {
		errs = append(errs, fmt.Errorf("media ports %v: no even/odd pair", c.MediaPorts))
	}
	if c.SignalingPorts.Len() == 0 {
		errs = append(errs, fmt.Errorf("signaling ports %v: empty range", c.SignalingPorts))
	}
	if c.MediaPorts.overlaps(c.SignalingPorts) {
		errs = append(errs, fmt.Errorf("media ports %v overlap signaling ports %v", c.MediaPorts, c.SignalingPorts))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"signaling lifetime", c.SignalingLifetime},
		{"register margin", c.RegisterMargin},
		{"media setup", c.MediaSetup},
		{"media idle", c.MediaIdle},
	} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("%s %v: negative", d.name, d.d))
		}
	}
	if c.MaxCalls < 0 {
		errs = append(errs, fmt.Errorf("max calls %d: negative", c.MaxCalls))
	}
	return c, errors.Join(errs...)
}

// mediaSlots returns the number of even/odd pairs in r.
func mediaSlots(r PortRange) int {
	first := int(r.First) + int(r.First)%2
	if r.Len() == 0 || first+1 > int(r.Last) {
		return 0
	}
	return (int(r.Last) - first + 1) / 2
}
