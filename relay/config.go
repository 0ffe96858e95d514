package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/relay/policy"
)

// Mode is a deployment mode: it chooses the next hop of a message, nothing else.
type Mode uint8

const (
	// Upstream (sidecar): everything from outside goes to the upstream (the PBX); everything from
	// inside goes to the binding it was addressed to, else per RFC 3261.
	Upstream Mode = iota
	// Transparent (gateway): a message goes to its original destination.
	Transparent
)

func (m Mode) String() string {
	if m == Transparent {
		return "transparent"
	}
	return "upstream"
}

// UnmarshalText parses "upstream" or "transparent" (SIPCAR_MODE).
func (m *Mode) UnmarshalText(text []byte) error {
	switch strings.ToLower(strings.TrimSpace(string(text))) {
	case "upstream":
		*m = Upstream
	case "transparent":
		*m = Transparent
	default:
		return fmt.Errorf("%q: want upstream or transparent", text)
	}
	return nil
}

// Defaults of the caps in [Config] that protect sipcar and the inside from hostile traffic.
const (
	DefaultMaxErrorReplyRate       = 10
	DefaultMaxContacts             = 10
	DefaultMaxConnections          = 4096
	DefaultMaxConnectionsPerSource = 64
)

// Config configures a [Relay].
type Config struct {
	Mode Mode
	// Upstream is the next hop of requests from outside in upstream mode, and UpstreamTransport
	// the transport to it ("udp", "tcp", "tls").
	Upstream          netip.AddrPort
	UpstreamTransport string
	// UpstreamName is the upstream's host name as configured, for TLS server name checks; empty
	// when it was given as an address.
	UpstreamName string
	// InsideNets are the networks on the inside; every other address is outside.
	InsideNets []netip.Prefix

	// ListenUDP, ListenTCP and ListenTLS are where sipcar takes SIP from phones and peers; an
	// invalid AddrPort disables one. A wildcard address listens on every interface; the side of
	// a message is the side of its source address.
	ListenUDP, ListenTCP, ListenTLS netip.AddrPort
	// TLS serves ListenTLS; it must hold the certificate. ClientTLS configures the connections
	// sipcar opens to TLS next hops (nil: TLS 1.2+, verified against the system roots).
	TLS, ClientTLS *tls.Config

	// PublicBind maps sipcar's public addresses to the local addresses that receive their
	// traffic, for a public address the host does not have (a cloud's 1:1 NAT, an elastic IP):
	// media ports are bound and sent from the local address and advertised as the public one.
	PublicBind map[netip.Addr]netip.Addr

	// Map configures the server map; the relay sets its reservation hooks and release
	// callback. Media configures the media relay; the relay sets its port range and events.
	Map   pinhole.Config
	Media mediarelay.Config

	// Policy screens the requests that start something (nil permits every one the mode allows).
	Policy *policy.Policy

	// Replica, when set, is told of every change to the server map and the call state that a
	// standby needs to take over (see [Replicator]); nil replicates nothing.
	Replica Replicator

	// UDPTCPFallback sends a request that would go over UDP but is larger than 1300 bytes after
	// rewriting over TCP instead (RFC 3261 section 18.1.1); otherwise it goes over UDP anyway,
	// fragmented by IP.
	UDPTCPFallback bool

	// MaxMessageRate caps the SIP messages per second one source address may send; the excess is
	// dropped and counted. 0 means no cap. MaxPrefixRate caps those of all the addresses of one
	// network, the source's first RatePrefixV4 (default 24) or RatePrefixV6 (default 64) bits, so
	// that a flood spread over a network is held too (0: four times MaxMessageRate; negative: no
	// cap). The upstream is never throttled.
	MaxMessageRate, MaxPrefixRate int
	RatePrefixV4, RatePrefixV6    int
	// MaxErrorReplyRate caps the responses sipcar makes itself (400, 403, 503, ...) per second to
	// one UDP source, and fifty times that in total (0: DefaultMaxErrorReplyRate; negative: no cap).
	MaxErrorReplyRate int
	// MaxContacts caps the Contacts of a REGISTER; one with more is answered 403 before anything
	// is bound (0: DefaultMaxContacts; negative: no cap).
	MaxContacts int
	// MaxConnections caps the TCP and TLS connections open at once, MaxConnectionsPerSource those
	// of one source address (the upstream is exempt from the latter). A connection past a cap is
	// closed at once. 0 means the defaults; negative, no cap. The total is further held below the
	// process's file descriptor limit (see Relay.Run).
	MaxConnections, MaxConnectionsPerSource int
	// TLSHandshakeTimeout bounds a TLS handshake (default 10 s); MessageTimeout the time from the
	// first byte of a message on a TCP or TLS connection to its last (default 30 s), so that a
	// peer trickling bytes cannot hold a connection; ConnIdleTimeout how long a connection may
	// carry nothing at all (default 10 minutes; keep-alives count).
	TLSHandshakeTimeout, MessageTimeout, ConnIdleTimeout time.Duration
	// DescriptorLimit is the number of file descriptors the process may hold, which TCP and TLS
	// connections may use only as far as the ports' sockets leave room; 0 reads the process's
	// limit (RLIMIT_NOFILE).
	DescriptorLimit int
	// ResponseTimeout is how long a request forwarded over UDP waits for a response before
	// sipcar answers 503 (default RFC 3261's Timer B, 32 s); an INVITE that starts a call and gets
	// no response at all releases the call's media then.
	ResponseTimeout time.Duration

	// Capture receives a copy of every SIP message sipcar receives and sends (a HEP exporter);
	// nil captures nothing. Trace selects the calls whose rewriting is audited at info level and
	// captured as log records (nil: none; every message is audited at debug level).
	Capture Capturer
	Trace   *TraceFilter
	// CallHistory is how many ended calls the doctor keeps, for an hour at most (0:
	// DefaultCallHistory; negative: none, and calls in progress are not followed either).
	CallHistory int

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c *Config) validate() error {
	var errs []error
	if c.Mode == Upstream && !c.Upstream.IsValid() {
		errs = append(errs, errors.New("upstream mode needs an upstream address"))
	}
	if c.UpstreamTransport == "" {
		c.UpstreamTransport = "udp"
	}
	switch {
	case c.CallHistory == 0:
		c.CallHistory = DefaultCallHistory
	case c.CallHistory < 0:
		c.CallHistory = 0
	}
	if !slices.Contains([]string{"udp", "tcp", "tls"}, c.UpstreamTransport) {
		errs = append(errs, fmt.Errorf("upstream transport %q: want udp, tcp or tls", c.UpstreamTransport))
	}
	if !c.ListenUDP.IsValid() && !c.ListenTCP.IsValid() && !c.ListenTLS.IsValid() {
		errs = append(errs, errors.New("no listener: set at least one of UDP, TCP, TLS"))
	}
	if c.ListenTLS.IsValid() && (c.TLS == nil || (len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil)) {
		errs = append(errs, errors.New("a TLS listener needs a certificate"))
	}
	c.TLS, c.ClientTLS = hardenTLS(c.TLS), hardenTLS(c.ClientTLS)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ResponseTimeout <= 0 {
		c.ResponseTimeout = timerB
	}
	if c.MaxPrefixRate == 0 {
		c.MaxPrefixRate = 4 * c.MaxMessageRate
	}
	defaults := []struct {
		v   *int
		def int
	}{
		{&c.RatePrefixV4, 24},
		{&c.RatePrefixV6, 64},
		{&c.MaxErrorReplyRate, DefaultMaxErrorReplyRate},
		{&c.MaxContacts, DefaultMaxContacts},
		{&c.MaxConnections, DefaultMaxConnections},
		{&c.MaxConnectionsPerSource, DefaultMaxConnectionsPerSource},
	}
	for _, d := range defaults {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.RatePrefixV4 < 1 || c.RatePrefixV4 > 32 {
		errs = append(errs, fmt.Errorf("IPv4 rate prefix /%d: want 1 to 32", c.RatePrefixV4))
	}
	if c.RatePrefixV6 < 1 || c.RatePrefixV6 > 128 {
		errs = append(errs, fmt.Errorf("IPv6 rate prefix /%d: want 1 to 128", c.RatePrefixV6))
	}
	for _, d := range []struct {
		d   *time.Duration
		def time.Duration
	}{
		{&c.TLSHandshakeTimeout, 10 * time.Second},
		{&c.MessageTimeout, 30 * time.Second},
		{&c.ConnIdleTimeout, 10 * time.Minute},
	} {
		if *d.d <= 0 {
			*d.d = d.def
		}
	}
	return errors.Join(errs...)
}

// sideOf returns the side an address is on.
func (c *Config) sideOf(a netip.Addr) pinhole.Side {
	a = a.Unmap()
	for _, p := range c.InsideNets {
		if p.Contains(a) {
			return pinhole.Inside
		}
	}
	return pinhole.Outside
}

// aeadSuites are the TLS 1.2 cipher suites sipcar offers and accepts: AEAD only, forward secret
// (TLS 1.3's are all AEAD and not configurable). CBC with SHA-1 is not among them.
func aeadSuites() []uint16 {
	return []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
}

// hardenTLS returns a copy of c that speaks TLS 1.2 or later with AEAD suites only, unless the
// operator chose suites; nil stays nil.
func hardenTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	c = c.Clone()
	if c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	if c.CipherSuites == nil {
		c.CipherSuites = aeadSuites()
	}
	return c
}
