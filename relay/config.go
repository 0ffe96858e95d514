package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
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

	// UDPTCPFallback sends a request that would go over UDP but is larger than 1300 bytes after
	// rewriting over TCP instead (RFC 3261 section 18.1.1); otherwise it goes over UDP anyway,
	// fragmented by IP.
	UDPTCPFallback bool

	// MaxMessageRate caps the SIP messages per second one source address may send; the excess is
	// dropped and counted. 0 means no cap.
	MaxMessageRate int
	// ResponseTimeout is how long a request forwarded over UDP waits for a response before
	// sipcar answers 503 (default RFC 3261's Timer B, 32 s).
	ResponseTimeout time.Duration

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
	if !slices.Contains([]string{"udp", "tcp", "tls"}, c.UpstreamTransport) {
		errs = append(errs, fmt.Errorf("upstream transport %q: want udp, tcp or tls", c.UpstreamTransport))
	}
	if !c.ListenUDP.IsValid() && !c.ListenTCP.IsValid() && !c.ListenTLS.IsValid() {
		errs = append(errs, errors.New("no listener: set at least one of UDP, TCP, TLS"))
	}
	if c.ListenTLS.IsValid() && (c.TLS == nil || (len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil)) {
		errs = append(errs, errors.New("a TLS listener needs a certificate"))
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ResponseTimeout <= 0 {
		c.ResponseTimeout = timerB
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
