package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-reuseport"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// transport carries SIP over UDP, TCP and TLS for the relay. It owns every SIP socket (the
// listeners, the sockets of sip bindings, transparent mode's sockets that send from servers'
// addresses) and every TCP and TLS connection; it frames what arrives and hands each message to
// deliver, on the goroutine that read it; and it sends a message to an address over a transport,
// from the socket or connection that stands for one of sipcar's addresses.
//
// Sending never blocks the caller on the network: a UDP datagram is written at once, a message
// over TCP or TLS is queued on its connection, which a goroutine of its own dials, handshakes and
// writes. A reader therefore never waits for another peer, whatever that peer does.
type transport struct {
	cfg     *Config
	log     *slog.Logger
	metrics *metrics
	limits  *connLimits
	rep     *replier // answers a stream whose framing broke
	// deliver handles a message; the bytes are only valid during the call.
	deliver func(in inbound, raw []byte)
	// room says how many connections the descriptors leave room for (negative: no bound).
	room func() int
	// bindAddr maps one of sipcar's advertised addresses to the local address that stands for it;
	// publicListen reports whether an address is a public listener's.
	bindAddr     func(netip.AddrPort) netip.AddrPort
	publicListen func(netip.AddrPort) bool

	// bufs lends UDP readers a buffer of maxUDPMessage bytes while they handle a message.
	bufs sync.Pool
	wg   sync.WaitGroup // readers, writers and dials

	mu     sync.Mutex // guards the following
	closed bool
	udp    map[netip.AddrPort]*udpSocket // by the address it stands for (listener or binding)
	spoof  map[netip.AddrPort]*udpSocket // transparent mode: sockets sending from servers' addresses
	// listenerUDP is the UDP listener of each family (0: IPv4, 1: IPv6), which sends what
	// sipcar's own listening address sends (upstream mode).
	listenerUDP [2]*udpSocket

	streams streamState
}

func newTransport(cfg *Config, m *metrics, limits *connLimits, rep *replier) *transport {
	t := &transport{cfg: cfg, log: cfg.Logger, metrics: m, limits: limits, rep: rep,
		udp: make(map[netip.AddrPort]*udpSocket), spoof: make(map[netip.AddrPort]*udpSocket)}
	t.bufs.New = func() any { b := make([]byte, maxUDPMessage); return &b }
	t.streams.conns = make(map[connKey]*streamConn)
	t.streams.failed = make(map[netip.AddrPort]time.Time)
	return t
}

// listen opens the configured listeners and starts reading them. A listener on the IPv4
// wildcard (the default, ":5060") has an IPv6 twin on the same port when sipcar has an IPv6
// address: a dual-stack sipcar takes SIP in both families without being told twice.
func (t *transport) listen() error {
	if t.cfg.ListenUDP.IsValid() {
		for i, a := range t.listenAddrs(t.cfg.ListenUDP) {
			network := "udp" // as configured: [::] is dual-stack
			if i > 0 {
				network = "udp6" // the twin of an IPv4 wildcard: IPv6 only
			}
			var c *net.UDPConn
			var err error
			if t.cfg.Mode == Transparent {
				c, err = sock.ListenTransparentUDP(a) // of a's family: a transparent socket serves one
			} else {
				c, err = listenUDP(network, a)
			}
			if err != nil {
				return err
			}
			s := t.serveUDP(c, a, true, t.cfg.Mode == Transparent)
			t.mu.Lock()
			t.listenerUDP[familyIndex(a.Addr())] = s
			t.mu.Unlock()
		}
	}
	for _, l := range []struct {
		transport string
		addr      netip.AddrPort
	}{{"tcp", t.cfg.ListenTCP}, {"tls", t.cfg.ListenTLS}} {
		if !l.addr.IsValid() {
			continue
		}
		for i, a := range t.listenAddrs(l.addr) {
			var ln net.Listener
			var err error
			network := "tcp"
			if i > 0 {
				network = "tcp6"
			}
			if t.cfg.Mode == Transparent {
				ln, err = sock.ListenTransparentTCP(a)
			} else {
				ln, err = reuseport.Listen(network, a.String())
			}
			if err != nil {
				return fmt.Errorf("listen %s %v: %w", l.transport, a, err)
			}
			if l.transport == "tls" {
				ln = tls.NewListener(ln, t.cfg.TLS)
			}
			t.serveStreams(ln, l.transport, a, true)
		}
	}
	return nil
}

// listenAddrs returns the addresses a configured listener opens: itself, and for the IPv4
// wildcard of a sipcar with an IPv6 address, the IPv6 wildcard on the same port.
func (t *transport) listenAddrs(a netip.AddrPort) []netip.AddrPort {
	out := []netip.AddrPort{a}
	if a.Addr() == netip.IPv4Unspecified() && t.hasIPv6() {
		out = append(out, netip.AddrPortFrom(netip.IPv6Unspecified(), a.Port()))
	}
	return out
}

// hasIPv6 reports whether sipcar has an IPv6 address on either side.
func (t *transport) hasIPv6() bool {
	m := t.cfg.Map
	return m.Public.IPv6.IsValid() || m.Inside.IPv6.IsValid()
}

// familyIndex is 0 for IPv4, 1 for IPv6.
func familyIndex(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 0
	}
	return 1
}

// send sends msg to dst over transport, from the socket or connection that stands for local. A
// failure it can tell at once is returned; one that comes later (a connection that cannot be
// dialed, a write that fails) is reported to onFail, from another goroutine. msg must not change
// afterwards: a stream transport queues it.
func (t *transport) send(local netip.AddrPort, transport string, dst netip.AddrPort, msg []byte, onFail func(error)) error {
	if transport != "udp" {
		return t.sendStream(local, transport, dst, msg, onFail)
	}
	return t.sendUDP(local, dst, msg)
}

// close closes every socket and connection and waits for their goroutines.
func (t *transport) close() {
	t.mu.Lock()
	t.closed = true
	socks := make([]*udpSocket, 0, len(t.udp)+len(t.spoof))
	for _, s := range t.udp {
		socks = append(socks, s)
	}
	for _, s := range t.spoof {
		socks = append(socks, s)
	}
	t.mu.Unlock()
	for _, s := range socks {
		s.conn.Close()
	}
	t.closeStreams()
	t.wg.Wait()
}

// logOnce logs at most once per source per interval, so that a flood does not flood the log.
func (t *transport) logOnce(src netip.AddrPort, msg string, args ...any) {
	if t.metrics.logLimit.allow(src.Addr(), time.Now()) {
		t.log.Warn(msg, args...)
	}
}

// errClosed is what sending on a closed transport returns.
var errClosed = errors.New("relay closed")
