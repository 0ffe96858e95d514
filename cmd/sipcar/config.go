package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/pinhole/replica"
	"github.com/sipcar/sipcar/relay"
	"github.com/sipcar/sipcar/relay/hep"
	"github.com/sipcar/sipcar/relay/policy"
)

// config is sipcar's configuration: every field is one SIPCAR_ environment variable.
type config struct {
	Mode              relay.Mode        `env:"MODE" envDefault:"upstream" help:"upstream (sidecar next to a PBX) or transparent (NAT gateway)"`
	Upstream          sipURI            `env:"UPSTREAM" help:"the PBX, as a SIP URI: sip:pbx:5060;transport=udp (upstream mode)"`
	PublicAddr        []netip.Addr      `env:"PUBLIC_ADDR" help:"the address the world reaches sipcar at, IPv4 and/or IPv6, comma-separated (required)"`
	PublicBindAddr    []netip.Addr      `env:"PUBLIC_BIND_ADDR" help:"when PUBLIC_ADDR is not this host's (a cloud's 1:1 NAT): the local address(es) its traffic arrives at, one per family (default: PUBLIC_ADDR; required when that is not local)"`
	InsideAddr        []netip.Addr      `env:"INSIDE_ADDR" help:"sipcar's inside-facing address(es) (default: PUBLIC_ADDR)"`
	InsideNets        []netip.Prefix    `env:"INSIDE_NETS" help:"CIDRs of the inside, comma-separated (default in upstream mode: the upstream's address)"`
	ListenUDP         listenAddr        `env:"LISTEN_UDP" default:":5060" help:"UDP SIP listener; set and empty disables"`
	ListenTCP         listenAddr        `env:"LISTEN_TCP" default:":5060" help:"TCP SIP listener; set and empty disables"`
	ListenTLS         listenAddr        `env:"LISTEN_TLS" envDefault:"" help:"TLS SIP listener (e.g. :5061); needs TLS_CERT and TLS_KEY"`
	TLSCert           string            `env:"TLS_CERT" help:"PEM certificate chain presented to phones"`
	TLSKey            string            `env:"TLS_KEY" help:"PEM private key of TLS_CERT"`
	TLSCA             string            `env:"TLS_CA" help:"PEM CA bundle that TLS next hops are verified against (default: system roots)"`
	TLSInsecure       bool              `env:"TLS_INSECURE" envDefault:"false" help:"do not verify TLS next hops (testing only)"`
	RTPPorts          pinhole.PortRange `env:"RTP_PORTS" envDefault:"20000-29999" help:"relay port range for RTP/RTCP pairs"`
	SIPPorts          pinhole.PortRange `env:"SIP_PORTS" envDefault:"40000-49999" help:"port range of signaling bindings"`
	SignalingTTL      time.Duration     `env:"SIGNALING_TTL" envDefault:"2m" help:"a signaling binding's lifetime after its last message"`
	MediaTTL          time.Duration     `env:"MEDIA_TTL" envDefault:"50s" help:"a media pair's lifetime until its first packet"`
	MediaIdleTTL      time.Duration     `env:"MEDIA_IDLE_TTL" envDefault:"60s" help:"a media pair's lifetime after its last packet"`
	MaxCalls          int               `env:"MAX_CALLS" envDefault:"0" help:"cap on calls with media (0: the port range is the cap)"`
	MaxCallsPerSource int               `env:"MAX_CALLS_PER_SOURCE" envDefault:"100" help:"cap on calls with media per source address (-1: none)"`
	Policy            policyRules       `env:"POLICY" help:"screening rules, ';'-separated, first match wins (relay/policy/README.md), e.g. permit src=198.51.100.0/24 method=INVITE,REGISTER; deny src=any"`
	PolicyFile        string            `env:"POLICY_FILE" help:"a file of screening rules, one per line, reloaded on SIGHUP (instead of POLICY)"`
	PolicyDefault     *policy.Action    `env:"POLICY_DEFAULT" help:"action when no rule matches: permit or deny (default: permit in upstream mode, deny in transparent mode)"`
	UDPTCPFallback    bool              `env:"UDP_TCP_FALLBACK" envDefault:"false" help:"send requests larger than 1300 bytes after rewriting over TCP (RFC 3261 18.1.1) instead of fragmented UDP"`
	MaxMessageRate    int               `env:"MAX_MESSAGE_RATE" envDefault:"200" help:"SIP messages per second one source may send (burst twice that); 0: no cap"`
	MaxPrefixRate     int               `env:"MAX_PREFIX_RATE" envDefault:"0" help:"SIP messages per second all the addresses of one network may send (RATE_PREFIX_V4/_V6); 0: four times MAX_MESSAGE_RATE, -1: no cap"`
	RatePrefixV4      int               `env:"RATE_PREFIX_V4" envDefault:"24" help:"the network of an IPv4 source for MAX_PREFIX_RATE, in bits"`
	RatePrefixV6      int               `env:"RATE_PREFIX_V6" envDefault:"64" help:"the network of an IPv6 source for MAX_PREFIX_RATE, in bits"`
	MaxErrorReplyRate int               `env:"MAX_ERROR_REPLY_RATE" envDefault:"10" help:"sipcar's own error answers per second to one UDP source (50x that in total); 0: no cap"`
	MaxContacts       int               `env:"MAX_CONTACTS" envDefault:"10" help:"Contacts of one REGISTER; more is answered 403; 0: no cap"`
	MaxBindingsPerSrc int               `env:"MAX_BINDINGS_PER_SOURCE" envDefault:"200" help:"signaling bindings the messages of one source address may hold; more is answered 503; 0: no cap"`
	MaxStreamsPerCall int               `env:"MAX_STREAMS_PER_CALL" envDefault:"10" help:"media streams (m= lines) of one call; an offer of more is answered 488; 0: no cap"`
	MaxPortsPerSource int               `env:"MAX_PORTS_PER_SOURCE" envDefault:"1000" help:"relay ports the calls of one source address may hold; more is answered 503; 0: no cap"`
	MaxConnections    int               `env:"MAX_CONNECTIONS" envDefault:"4096" help:"TCP and TLS connections open at once (also held below the file descriptor limit); 0: no cap but that"`
	MaxConnsPerSource int               `env:"MAX_CONNECTIONS_PER_SOURCE" envDefault:"64" help:"TCP and TLS connections of one source address (the upstream is exempt); 0: no cap"`
	TLSHandshakeTTL   time.Duration     `env:"TLS_HANDSHAKE_TIMEOUT" envDefault:"10s" help:"time a TLS handshake may take"`
	MessageTimeout    time.Duration     `env:"MESSAGE_TIMEOUT" envDefault:"30s" help:"time from the first byte of a message on TCP/TLS to its last"`
	TransactionTTL    time.Duration     `env:"TRANSACTION_TIMEOUT" envDefault:"32s" help:"time a request forwarded over UDP waits for a response before sipcar answers 503 (Timer B)"`
	MediaMode         mediarelay.Mode   `env:"MEDIA_MODE" envDefault:"auto" help:"auto (fan-in where a start-up probe shows it reaches sipcar, per side; a socket per port elsewhere), fanin (nftables TPROXY everywhere, needs CAP_NET_ADMIN) or fallback (a socket per port)"`
	AdminAddr         listenAddr        `env:"ADMIN_ADDR" envDefault:"127.0.0.1:9060" help:"admin HTTP endpoint (/healthz /readyz /metrics /servermap /sessions); empty disables"`
	Pprof             bool              `env:"PPROF" envDefault:"false" help:"serve Go's profiles at /debug/pprof/ on the admin endpoint"`
	DrainTimeout      time.Duration     `env:"DRAIN_TIMEOUT" envDefault:"30s" help:"on SIGTERM, how long calls may go on before sipcar closes"`
	HEPAddr           hepCollector      `env:"HEP_ADDR" help:"HEP collector (Homer, heplify-server, Kamailio sipcapture) that gets every SIP message on both sides, RTCP and quality reports: host:port (UDP), udp://host:port or tcp://host:port; empty: no export"`
	HEPID             uint32            `env:"HEP_ID" envDefault:"2002" help:"the capture agent ID sipcar gives the HEP collector"`
	HEPPassword       string            `env:"HEP_PASSWORD" help:"the HEP collector's password (capture password), sent in every HEP packet"`
	CallHistory       int               `env:"CALL_HISTORY" envDefault:"10000" help:"ended calls the doctor keeps (for an hour at most) to say why they had no audio; 0: none"`
	Trace             traceFilter       `env:"TRACE" help:"calls whose rewriting is audited (each message before and after, every change and why) at info level and to HEP: callid:<Call-ID>|src:<address or CIDR>, '|'-separated"`
	LogLevel          string            `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat         string            `env:"LOG_FORMAT" envDefault:"text" help:"text or json"`
	ReplicaRedis      string            `env:"REPLICA_REDIS" help:"Redis that keeps the calls for a standby: redis://host:6379 (rediss:// for TLS; Sentinels: redis://s1:26379?master_name=m&addr=s2:26379); empty: no replication"`
	ReplicaRole       replicaRole       `env:"REPLICA_ROLE" envDefault:"active" help:"active (takes over the calls in Redis at start, unless another sipcar is active) or standby (keeps a copy, takes over when its addresses come to this host or on POST /takeover)"`
	ReplicaPrefix     string            `env:"REPLICA_PREFIX" envDefault:"sipcar" help:"prefix of the replica's Redis keys: one per pair of sipcars sharing a Redis"`
	ReplicaBatch      time.Duration     `env:"REPLICA_BATCH" envDefault:"50ms" help:"how long changes gather before they are written to Redis in one batch"`
	ReplicaMaxLag     time.Duration     `env:"REPLICA_MAX_LAG" envDefault:"2s" help:"a standby that has not read the replication log to its end for longer is stale: it refuses to take over (/readyz says why)"`

	MediaKernel mediarelay.KernelMode `env:"MEDIA_KERNEL" envDefault:"off" help:"off (userspace only: every packet analysed for call quality), auto (hand latched RTP legs to an eBPF program on tc ingress where the kernel and capabilities allow: CAP_BPF, CAP_NET_ADMIN, Linux 6.6; says at start-up why not) or on (required); a leg in the kernel is counted but no longer analysed"`
}

// replicaRole is SIPCAR_REPLICA_ROLE.
type replicaRole string

func (r *replicaRole) UnmarshalText(b []byte) error {
	switch v := replicaRole(strings.ToLower(strings.TrimSpace(string(b)))); v {
	case "active", "standby":
		*r = v
		return nil
	}
	return fmt.Errorf("%q: want active or standby", b)
}

const envPrefix = "SIPCAR_"

// sipURI is a SIP URI naming a host (an IP or a name, resolved once at start-up) and a port.
type sipURI struct {
	Host      string
	Port      uint16
	Transport string
}

func (u *sipURI) UnmarshalText(b []byte) error {
	s := string(b)
	if s == "" {
		return nil
	}
	rest, ok := strings.CutPrefix(strings.ToLower(s), "sip:")
	if !ok {
		if rest, ok = strings.CutPrefix(strings.ToLower(s), "sips:"); !ok {
			return errors.New("want a SIP URI such as sip:pbx:5060;transport=udp")
		}
		u.Transport = "tls"
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		rest = rest[at+1:]
	}
	hostport, params, _ := strings.Cut(rest, ";")
	for _, p := range strings.Split(params, ";") {
		if v, ok := strings.CutPrefix(p, "transport="); ok {
			u.Transport = v
		}
	}
	if u.Transport == "" {
		u.Transport = "udp"
	}
	if u.Transport != "udp" && u.Transport != "tcp" && u.Transport != "tls" {
		return fmt.Errorf("transport %q: want udp, tcp or tls", u.Transport)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = strings.Trim(hostport, "[]"), "5060"
		if u.Transport == "tls" {
			port = "5061"
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || host == "" {
		return fmt.Errorf("%q: want a host and a port from 1 to 65535", hostport)
	}
	u.Host, u.Port = host, uint16(n)
	return nil
}

// policyRules is SIPCAR_POLICY: screening rules, parsed when the configuration is read so that
// a wrong rule stops start-up with the variable's name.
type policyRules struct{ *policy.Rules }

func (p *policyRules) UnmarshalText(b []byte) error {
	if strings.TrimSpace(string(b)) == "" {
		p.Rules = nil
		return nil
	}
	r, err := policy.Parse(string(b))
	if err != nil {
		return errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	p.Rules = r
	return nil
}

// hepCollector is SIPCAR_HEP_ADDR: a host (an IP or a name, resolved once at start-up), a port
// and a transport.
type hepCollector struct {
	Network, Host string
	Port          uint16
}

func (h *hepCollector) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	*h = hepCollector{}
	if s == "" {
		return nil
	}
	h.Network = "udp"
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		if scheme != "udp" && scheme != "tcp" {
			return fmt.Errorf("transport %q: want udp:// or tcp://", scheme)
		}
		h.Network, s = scheme, rest
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want host:port, udp://host:port or tcp://host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || host == "" {
		return fmt.Errorf("%q: want a host and a port from 1 to 65535", s)
	}
	h.Host, h.Port = host, uint16(n)
	return nil
}

// traceFilter is SIPCAR_TRACE, parsed when the configuration is read.
type traceFilter struct{ *relay.TraceFilter }

func (t *traceFilter) UnmarshalText(b []byte) error {
	f, err := relay.ParseTrace(string(b))
	t.TraceFilter = f
	return err
}

// listenAddr is host:port, :port (every address) or empty (disabled).
type listenAddr struct{ netip.AddrPort }

var defaultListen = listenAddr{netip.MustParseAddrPort("0.0.0.0:5060")}

func (l *listenAddr) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		l.AddrPort = netip.AddrPort{}
		return nil
	}
	if strings.HasPrefix(s, ":") {
		s = "0.0.0.0" + s
	}
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		return errors.New("want host:port, :port, or empty to disable")
	}
	l.AddrPort = a
	return nil
}

// loadConfig reads the configuration from environ (KEY=value pairs). Its error lists every wrong
// variable, one per line, by its name.
func loadConfig(environ []string) (config, error) {
	vars := env.ToMap(environ)
	cfg, err := env.ParseAsWithOptions[config](env.Options{Prefix: envPrefix, Environment: vars})
	// The env library applies a default to a variable set to the empty string too, so the
	// listeners, which an empty value disables, take their defaults here, only when unset.
	if _, set := vars[envPrefix+"LISTEN_UDP"]; !set {
		cfg.ListenUDP = defaultListen
	}
	if _, set := vars[envPrefix+"LISTEN_TCP"]; !set {
		cfg.ListenTCP = defaultListen
	}
	var lines []string
	if err != nil {
		var agg env.AggregateError
		if errors.As(err, &agg) {
			for _, e := range agg.Errors {
				lines = append(lines, describe(e))
			}
		} else {
			lines = append(lines, err.Error())
		}
	}
	bad := func(name, msg string) {
		for _, l := range lines {
			if strings.HasPrefix(l, envPrefix+name+":") {
				return // already said why this variable is wrong
			}
		}
		lines = append(lines, envPrefix+name+": "+msg)
	}
	switch cfg.Mode {
	case relay.Upstream:
		if cfg.Upstream.Host == "" {
			bad("UPSTREAM", "required in upstream mode: the PBX, e.g. sip:pbx:5060;transport=udp")
		}
	case relay.Transparent:
		if len(cfg.InsideNets) == 0 {
			bad("INSIDE_NETS", "required in transparent mode: the CIDRs of the LAN behind the gateway")
		}
	}
	if len(cfg.PublicAddr) == 0 {
		bad("PUBLIC_ADDR", "required: the address the world reaches sipcar at, e.g. 203.0.113.1")
	}
	for _, l := range []struct {
		name  string
		addrs []netip.Addr
	}{{"PUBLIC_ADDR", cfg.PublicAddr}, {"INSIDE_ADDR", cfg.InsideAddr}, {"PUBLIC_BIND_ADDR", cfg.PublicBindAddr}} {
		if _, err := addrs(l.addrs); err != nil {
			bad(l.name, err.Error())
		}
	}
	if cfg.ListenTLS.IsValid() && (cfg.TLSCert == "" || cfg.TLSKey == "") {
		bad("LISTEN_TLS", "needs SIPCAR_TLS_CERT and SIPCAR_TLS_KEY")
	}
	if cfg.RTPPorts.Len() < 2 {
		bad("RTP_PORTS", "want a range of at least one even/odd pair, e.g. 20000-29999")
	}
	if cfg.Policy.Rules != nil && cfg.PolicyFile != "" {
		bad("POLICY_FILE", "set POLICY or POLICY_FILE, not both")
	}
	if cfg.PolicyFile != "" {
		if _, err := policy.Load(cfg.PolicyFile); err != nil {
			bad("POLICY_FILE", strings.ReplaceAll(err.Error(), "\n", "; "))
		}
	}
	if _, err := parseLevel(cfg.LogLevel); err != nil {
		bad("LOG_LEVEL", err.Error())
	}
	for _, c := range []struct {
		name string
		v    int
	}{
		{"MAX_ERROR_REPLY_RATE", cfg.MaxErrorReplyRate}, {"MAX_CONTACTS", cfg.MaxContacts},
		{"MAX_BINDINGS_PER_SOURCE", cfg.MaxBindingsPerSrc}, {"MAX_STREAMS_PER_CALL", cfg.MaxStreamsPerCall},
		{"MAX_PORTS_PER_SOURCE", cfg.MaxPortsPerSource}, {"MAX_CONNECTIONS", cfg.MaxConnections},
		{"MAX_CONNECTIONS_PER_SOURCE", cfg.MaxConnsPerSource},
	} {
		if c.v < 0 {
			bad(c.name, fmt.Sprintf("%d: want 0 (no cap) or more", c.v))
		}
	}
	if cfg.RatePrefixV4 < 1 || cfg.RatePrefixV4 > 32 {
		bad("RATE_PREFIX_V4", fmt.Sprintf("%d: want 1 to 32", cfg.RatePrefixV4))
	}
	if cfg.RatePrefixV6 < 1 || cfg.RatePrefixV6 > 128 {
		bad("RATE_PREFIX_V6", fmt.Sprintf("%d: want 1 to 128", cfg.RatePrefixV6))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"TLS_HANDSHAKE_TIMEOUT", cfg.TLSHandshakeTTL}, {"MESSAGE_TIMEOUT", cfg.MessageTimeout}, {"TRANSACTION_TIMEOUT", cfg.TransactionTTL}} {
		if d.v <= 0 {
			bad(d.name, fmt.Sprintf("%v: want a positive duration", d.v))
		}
	}
	if cfg.LogFormat != "text" && cfg.LogFormat != "json" {
		bad("LOG_FORMAT", fmt.Sprintf("%q: want text or json", cfg.LogFormat))
	}
	if cfg.ReplicaRedis != "" {
		if err := replica.CheckURL(cfg.ReplicaRedis); err != nil {
			bad("REPLICA_REDIS", err.Error())
		}
	} else if cfg.ReplicaRole == "standby" {
		bad("REPLICA_ROLE", "a standby needs SIPCAR_REPLICA_REDIS")
	}
	if cfg.ReplicaPrefix == "" || strings.ContainsAny(cfg.ReplicaPrefix, "{} ") {
		bad("REPLICA_PREFIX", fmt.Sprintf("%q: want a name without braces or spaces", cfg.ReplicaPrefix))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"REPLICA_BATCH", cfg.ReplicaBatch}, {"REPLICA_MAX_LAG", cfg.ReplicaMaxLag}} {
		if d.v <= 0 {
			bad(d.name, fmt.Sprintf("%v: want a positive duration", d.v))
		}
	}
	if len(lines) > 0 {
		return cfg, errors.New(strings.Join(lines, "\n"))
	}
	return cfg, nil
}

// describe turns one error of the env library into a line that names the variable, not the Go
// field (the library names fields in ParseError).
func describe(err error) string {
	var pe env.ParseError
	if errors.As(err, &pe) {
		if f, ok := reflect.TypeFor[config]().FieldByName(pe.Name); ok {
			msg := pe.Err.Error()
			var inner interface{ Unwrap() error }
			if errors.As(pe.Err, &inner) && inner.Unwrap() != nil {
				msg = inner.Unwrap().Error()
			}
			return envPrefix + f.Tag.Get("env") + ": " + msg
		}
	}
	return err.Error()
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}

// printHelp lists every variable with its default.
func printHelp(w io.Writer) {
	fmt.Fprintln(w, "sipcar: a SIP-aware NAT relay (userspace SIP ALG). Configured by environment variables:")
	fmt.Fprintln(w)
	t := reflect.TypeFor[config]()
	for i := range t.NumField() {
		f := t.Field(i)
		def := f.Tag.Get("envDefault")
		if d := f.Tag.Get("default"); d != "" {
			def = d
		}
		if def == "" {
			def = "(none)"
		}
		fmt.Fprintf(w, "  %s%-22s default %-16s %s\n", envPrefix, f.Tag.Get("env"), def, f.Tag.Get("help"))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands: sipcar (run), sipcar show servermap|sessions|policy (from a running instance's admin endpoint),")
	fmt.Fprintln(w, "sipcar healthcheck (exit status 0 when the running instance's /readyz says ready),")
	fmt.Fprintln(w, "sipcar doctor [Call-ID] (why a call in progress or ended in the last hour has no or one-way audio, per leg).")
}

// relayConfig turns the configuration into the relay's, resolving the upstream's name.
func (c config) relayConfig(ctx context.Context, log *slog.Logger) (relay.Config, error) {
	rc := relay.Config{
		InsideNets: c.InsideNets,
		ListenUDP:  c.ListenUDP.AddrPort,
		ListenTCP:  c.ListenTCP.AddrPort,
		ListenTLS:  c.ListenTLS.AddrPort,
		Logger:     log,

		MaxMessageRate: c.MaxMessageRate,
		UDPTCPFallback: c.UDPTCPFallback,

		MaxPrefixRate:           c.MaxPrefixRate,
		RatePrefixV4:            c.RatePrefixV4,
		RatePrefixV6:            c.RatePrefixV6,
		MaxErrorReplyRate:       noCap(c.MaxErrorReplyRate),
		MaxContacts:             noCap(c.MaxContacts),
		MaxConnections:          noCap(c.MaxConnections),
		MaxConnectionsPerSource: noCap(c.MaxConnsPerSource),
		TLSHandshakeTimeout:     c.TLSHandshakeTTL,
		MessageTimeout:          c.MessageTimeout,
		ResponseTimeout:         c.TransactionTTL,
	}
	rc.Mode = c.Mode
	rc.Trace = c.Trace.TraceFilter
	rc.CallHistory = noCap(c.CallHistory)
	if c.Upstream.Host != "" {
		ip, err := resolve(ctx, c.Upstream.Host)
		if err != nil {
			return rc, fmt.Errorf("%sUPSTREAM: %w", envPrefix, err)
		}
		rc.Upstream = netip.AddrPortFrom(ip, c.Upstream.Port)
		if _, err := netip.ParseAddr(c.Upstream.Host); err != nil {
			rc.UpstreamName = c.Upstream.Host
		}
		rc.UpstreamTransport = c.Upstream.Transport
		if len(rc.InsideNets) == 0 {
			rc.InsideNets = []netip.Prefix{netip.PrefixFrom(ip, ip.BitLen())}
		}
	}
	inside := c.InsideAddr
	if len(inside) == 0 {
		inside = c.PublicAddr
	}
	in, _ := addrs(inside)
	pub, _ := addrs(c.PublicAddr)
	bind, _ := addrs(c.PublicBindAddr)
	rc.PublicBind = map[netip.Addr]netip.Addr{}
	for _, p := range [][2]netip.Addr{{pub.IPv4, bind.IPv4}, {pub.IPv6, bind.IPv6}} {
		switch {
		case !p[0].IsValid():
		case p[1].IsValid():
			rc.PublicBind[p[0]] = p[1]
		case !isLocal(p[0]):
			return rc, fmt.Errorf("%sPUBLIC_ADDR %s is not an address of this host: set %sPUBLIC_BIND_ADDR to the local address its traffic arrives at", envPrefix, p[0], envPrefix)
		}
	}
	rc.Map = pinhole.Config{
		Inside:            in,
		Public:            pub,
		MediaPorts:        c.RTPPorts,
		SignalingPorts:    c.SIPPorts,
		SignalingLifetime: c.SignalingTTL,
		MediaSetup:        c.MediaTTL,
		MediaIdle:         c.MediaIdleTTL,
		MaxCalls:          c.MaxCalls,
		MaxCallsPerSource: c.MaxCallsPerSource,

		MaxStreamsPerCall:    noCap(c.MaxStreamsPerCall),
		MaxPortsPerSource:    noCap(c.MaxPortsPerSource),
		MaxBindingsPerSource: noCap(c.MaxBindingsPerSrc),
	}
	rc.Media = mediarelay.Config{Mode: c.MediaMode, Kernel: c.MediaKernel, IdleTimeout: c.MediaIdleTTL, Logger: log,
		Sides: mediaSides(in, pub, rc.PublicBind, rc.InsideNets)}
	if c.ListenTLS.IsValid() {
		certs, err := newCertReloader(c.TLSCert, c.TLSKey, log)
		if err != nil {
			return rc, fmt.Errorf("%sTLS_CERT/%sTLS_KEY: %w", envPrefix, envPrefix, err)
		}
		rc.TLS = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate}
	}
	client := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.TLSInsecure}
	if c.TLSCA != "" {
		pem, err := os.ReadFile(c.TLSCA)
		if err != nil {
			return rc, fmt.Errorf("%sTLS_CA: %w", envPrefix, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return rc, fmt.Errorf("%sTLS_CA: no PEM certificate in %s", envPrefix, c.TLSCA)
		}
		client.RootCAs = pool
	}
	rc.ClientTLS = client
	return rc, nil
}

// hepExporter makes the HEP exporter of SIPCAR_HEP_ADDR, resolving its name; nil when export is
// off.
func (c config) hepExporter(ctx context.Context, log *slog.Logger, reg prometheus.Registerer) (*hep.Exporter, error) {
	if c.HEPAddr.Host == "" {
		return nil, nil
	}
	ip, err := resolve(ctx, c.HEPAddr.Host)
	if err != nil {
		return nil, fmt.Errorf("%sHEP_ADDR: %w", envPrefix, err)
	}
	e, err := hep.New(hep.Config{Collector: netip.AddrPortFrom(ip, c.HEPAddr.Port), Network: c.HEPAddr.Network,
		AgentID: c.HEPID, AuthKey: c.HEPPassword, Logger: log, Registerer: reg})
	if err != nil {
		return nil, fmt.Errorf("%sHEP_ADDR: %w", envPrefix, err)
	}
	return e, nil
}

// noCap turns a cap's variable into the libraries' terms: there 0 means their default and a
// negative value no cap; an operator who writes 0 means no cap.
func noCap(v int) int {
	if v == 0 {
		return -1
	}
	return v
}

// mediaSides describes sipcar's two sides to the media relay, which probes the way each one's
// media comes in: the inside from its networks (SIPCAR_INSIDE_NETS, or the upstream), the
// public side from anywhere, at the local addresses its traffic arrives at.
func mediaSides(in, pub pinhole.Addrs, bind map[netip.Addr]netip.Addr, insideNets []netip.Prefix) []mediarelay.Side {
	inside := mediarelay.Side{Name: "inside", Peers: insideNets}
	public := mediarelay.Side{Name: "public"}
	for _, a := range []netip.Addr{in.IPv4, in.IPv6} {
		if a.IsValid() {
			inside.Addrs = append(inside.Addrs, a)
		}
	}
	for _, a := range []netip.Addr{pub.IPv4, pub.IPv6} {
		if b, ok := bind[a]; ok {
			a = b
		}
		if a.IsValid() {
			public.Addrs = append(public.Addrs, a)
		}
	}
	return []mediarelay.Side{inside, public}
}

// addrs sorts up to one IPv4 and one IPv6 address into a side's addresses.
func addrs(list []netip.Addr) (pinhole.Addrs, error) {
	var a pinhole.Addrs
	for _, ip := range list {
		ip = ip.Unmap()
		switch {
		case ip.IsUnspecified() || ip.IsMulticast():
			return a, fmt.Errorf("%s: want a unicast address sipcar can be reached at", ip)
		case ip.Is4() && a.IPv4.IsValid(), ip.Is6() && a.IPv6.IsValid():
			return a, fmt.Errorf("want at most one IPv4 and one IPv6 address, got %v", list)
		case ip.Is4():
			a.IPv4 = ip
		default:
			a.IPv6 = ip
		}
	}
	return a, nil
}

func resolve(ctx context.Context, host string) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("resolve %s: %v", host, err)
	}
	return ips[0].Unmap(), nil
}

func netipLoopback(l listenAddr) netip.AddrPort {
	if l.Addr().Is6() {
		return netip.AddrPortFrom(netip.IPv6Loopback(), l.Port())
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), l.Port())
}

// policy builds the screening policy: the rules of POLICY or POLICY_FILE (none: only the
// default decides) and the default action of the mode unless POLICY_DEFAULT says otherwise.
func (c config) policy(reg prometheus.Registerer) (*policy.Policy, error) {
	def := policy.Permit
	if c.Mode == relay.Transparent {
		def = policy.Deny
	}
	if c.PolicyDefault != nil {
		def = *c.PolicyDefault
	}
	rules := c.Policy.Rules
	var err error
	switch {
	case c.PolicyFile != "":
		rules, err = policy.Load(c.PolicyFile)
	case rules == nil:
		rules, err = policy.Parse("")
	}
	if err != nil {
		return nil, err
	}
	return policy.New(rules, policy.Config{Default: def, Registerer: reg})
}

// isLocal reports whether a is one of this host's addresses.
func isLocal(a netip.Addr) bool {
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: let the bind say
	}
	for _, ia := range ifs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a.Unmap() {
				return true
			}
		}
	}
	return false
}
