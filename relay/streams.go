package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-reuseport"
)

// streamConn is a TCP or TLS connection sipcar reads SIP from and writes SIP to, in either
// direction: a connection a peer opened is reused for requests toward that peer (RFC 3261
// section 18.2.2, RFC 5923), and one sipcar opened serves the peer's replies.
type streamConn struct {
	r         *Relay
	conn      net.Conn
	transport string         // "tcp" or "tls"
	remote    netip.AddrPort // the peer
	local     netip.AddrPort // the address it stands for (listener or binding); intercepted: the original destination
	listener  bool
	// transparent: intercepted by TPROXY or REDIRECT.
	transparent bool
	// sniff: a connection to a binding port, which serves TCP and TLS alike (the server map
	// reserves one port per binding): a first byte of 0x16 starts a TLS handshake.
	sniff bool
	// counted is the address its place in connLimits is counted under: the peer's for a
	// connection it opened, zero for one sipcar dialed.
	counted netip.Addr
	dialed  bool

	wmu sync.Mutex // serialises writes: one message is written whole
}

type connKey struct {
	transport string
	remote    netip.AddrPort
}

// streamState holds the relay's TCP/TLS listeners and connections.
type streamState struct {
	mu        sync.Mutex
	listeners []net.Listener
	conns     map[connKey]*streamConn
	failed    map[netip.AddrPort]time.Time // next hops whose last connect failed, and when
}

func (r *Relay) listenStreams(ctx context.Context) error {
	if r.cfg.ListenTCP.IsValid() {
		var l net.Listener
		var err error
		if r.cfg.Mode == Transparent {
			l, err = listenTransparentTCP(r.cfg.ListenTCP)
		} else {
			l, err = reuseport.Listen("tcp", r.cfg.ListenTCP.String())
		}
		if err != nil {
			return fmt.Errorf("listen tcp %v: %w", r.cfg.ListenTCP, err)
		}
		r.serveStreams(l, "tcp", r.cfg.ListenTCP, true)
	}
	if r.cfg.ListenTLS.IsValid() {
		var l net.Listener
		var err error
		if r.cfg.Mode == Transparent {
			l, err = listenTransparentTCP(r.cfg.ListenTLS)
		} else {
			l, err = reuseport.Listen("tcp", r.cfg.ListenTLS.String())
		}
		if err != nil {
			return fmt.Errorf("listen tls %v: %w", r.cfg.ListenTLS, err)
		}
		r.serveStreams(tls.NewListener(l, r.cfg.TLS), "tls", r.cfg.ListenTLS, true)
	}
	return nil
}

// serveStreams accepts connections on l until it is closed.
func (r *Relay) serveStreams(l net.Listener, transport string, local netip.AddrPort, listener bool) {
	r.streams.mu.Lock()
	r.streams.listeners = append(r.streams.listeners, l)
	r.streams.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					r.metrics.connsRefused.WithLabelValues("descriptors").Inc()
					r.logOnce(netip.AddrPort{}, "too many open files: a connection could not be accepted; raise the file descriptor limit or lower SIPCAR_MAX_CONNECTIONS", "listener", local)
				}
				time.Sleep(10 * time.Millisecond) // EMFILE and the like: back off, do not spin
				continue
			}
			remote := addrPortOf(c.RemoteAddr())
			if why := r.conns.take(remote.Addr(), r.connectionRoom()); why != "" {
				// Closed before anything is read or a handshake is spent on it.
				r.metrics.connsRefused.WithLabelValues(why).Inc()
				r.logOnce(remote, "connection refused: cap reached", "src", remote, "cap", why)
				c.Close()
				continue
			}
			tr := transport
			if _, ok := c.(*tls.Conn); ok {
				tr = "tls"
			}
			sc := &streamConn{r: r, conn: c, transport: tr, remote: remote, local: local, listener: listener,
				sniff: !listener && r.cfg.TLS != nil, counted: remote.Addr()}
			if listener && r.cfg.Mode == Transparent {
				// TPROXY keeps the original destination as the local address; REDIRECT says it
				// through SO_ORIGINAL_DST.
				sc.local, sc.transparent = addrPortOf(c.LocalAddr()), true
				if dst, ok := soOriginalDst(c); ok && dst != sc.local && !dst.Addr().IsLoopback() {
					sc.local = dst
				}
			}
			r.addConn(sc)
		}
	}()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// addConn registers c and starts reading it.
func (r *Relay) addConn(c *streamConn) {
	r.streams.mu.Lock()
	if r.isClosed() {
		r.streams.mu.Unlock()
		c.conn.Close()
		r.conns.give(c.counted)
		return
	}
	r.streams.conns[connKey{c.transport, c.remote}] = c
	r.wg.Add(1)
	r.streams.mu.Unlock()
	go c.read()
}

func (r *Relay) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// read frames messages from the connection until it closes, breaks framing or runs out of
// time: a TLS handshake has TLSHandshakeTimeout, a message MessageTimeout from its first byte to
// its last (however slowly the bytes trickle), and a connection that carries nothing at all
// ConnIdleTimeout.
func (c *streamConn) read() {
	r := c.r
	defer r.wg.Done()
	defer c.close()
	if c.sniff && !c.startTLS() {
		return
	}
	if tc, ok := c.conn.(*tls.Conn); ok && !c.dialed {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.TLSHandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			why := "handshake-failed"
			if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
				why = "handshake-timeout"
			}
			r.metrics.connsClosed.WithLabelValues(why).Inc()
			r.log.Debug("TLS handshake failed", "remote", c.remote, "err", err)
			return
		}
	}
	br := bufio.NewReaderSize(c.conn, 16<<10)
	buf := make([]byte, 0, 16<<10)
	chunk := make([]byte, 16<<10)
	var started time.Time // when the first byte of the message in buf arrived
	for {
		for len(buf) > 0 {
			n, kind, err := nextFrame(buf)
			if err != nil {
				r.metrics.malformed.WithLabelValues(c.transport).Inc()
				r.metrics.dropped.WithLabelValues("malformed").Inc()
				r.logOnce(c.remote, "stream framing broken: answering and closing", "remote", c.remote, "err", err)
				if out := frameErrorReply(buf, err); out != nil {
					r.metrics.answered.WithLabelValues(strconv.Itoa(frameErrorCode(err))).Inc()
					_ = c.write(out)
				}
				r.metrics.connsClosed.WithLabelValues("framing").Inc()
				return
			}
			if kind == frameNeedMore {
				break
			}
			switch kind {
			case framePing:
				_ = c.write([]byte("\r\n"))
			case frameMessage:
				r.handle(inbound{transport: c.transport, src: c.remote, local: c.local, listener: c.listener, transparent: c.transparent, conn: c}, buf[:n])
			}
			buf = append(buf[:0], buf[n:]...)
			started = time.Now() // what is left began with this read at the latest
		}
		now := time.Now()
		deadline := now.Add(r.cfg.ConnIdleTimeout)
		if len(buf) == 0 {
			started = time.Time{}
		} else {
			if started.IsZero() {
				started = now
			}
			deadline = started.Add(r.cfg.MessageTimeout)
		}
		_ = c.conn.SetReadDeadline(deadline)
		n, err := br.Read(chunk)
		if n > 0 {
			if len(buf) == 0 {
				started = time.Now()
			}
			buf = append(buf, chunk[:n]...)
		}
		if err != nil {
			if isTimeout(err) {
				why := "idle"
				if len(buf) > 0 {
					why = "message-timeout"
				}
				r.metrics.connsClosed.WithLabelValues(why).Inc()
				r.logOnce(c.remote, "connection timed out", "remote", c.remote, "reason", why)
			}
			return
		}
	}
}

// isTimeout reports a deadline that ran out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// write sends one message over the connection.
func (c *streamConn) write(msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.conn.Write(msg)
	return err
}

func (c *streamConn) close() {
	c.wmu.Lock()
	conn := c.conn
	c.wmu.Unlock()
	conn.Close()
	r := c.r
	r.conns.give(c.counted)
	r.streams.mu.Lock()
	k := connKey{c.transport, c.remote}
	if r.streams.conns[k] == c {
		delete(r.streams.conns, k)
	}
	r.streams.mu.Unlock()
}

// sendStream sends msg to dst over TCP or TLS: over a live connection to dst when there is one,
// else over a new connection from local's address.
func (r *Relay) sendStream(local netip.AddrPort, transport string, dst netip.AddrPort, msg []byte) error {
	r.streams.mu.Lock()
	c := r.streams.conns[connKey{transport, dst}]
	r.streams.mu.Unlock()
	if c != nil {
		return c.write(msg)
	}
	c, err := r.dial(local, transport, dst)
	if err != nil {
		return err
	}
	return c.write(msg)
}

// dial opens a connection to dst. It binds to local's port (SO_REUSEPORT, beside the binding's
// own listener) so that the peer sees the binding it was told of, and falls back to any port.
func (r *Relay) dial(local netip.AddrPort, transport string, dst netip.AddrPort) (*streamConn, error) {
	// A next hop that just failed fails at once: messages are handled on their socket's reader,
	// and one dead PBX must not stall every phone behind it for a connect timeout each.
	r.streams.mu.Lock()
	if at, ok := r.streams.failed[dst]; ok && time.Since(at) < dialBackoff {
		r.streams.mu.Unlock()
		return nil, fmt.Errorf("connect %s %v: failed %v ago", transport, dst, time.Since(at).Round(time.Millisecond))
	}
	r.streams.mu.Unlock()
	if why := r.conns.take(netip.Addr{}, r.connectionRoom()); why != "" {
		r.metrics.connsRefused.WithLabelValues(why).Inc()
		return nil, fmt.Errorf("connect %s %v: connection cap reached", transport, dst)
	}
	conn, err := dialFrom(r.bindAddr(local), dst)
	if err != nil {
		r.conns.give(netip.Addr{})
		r.streams.mu.Lock()
		if len(r.streams.failed) > 10000 {
			clear(r.streams.failed)
		}
		r.streams.failed[dst] = time.Now()
		r.streams.mu.Unlock()
		return nil, fmt.Errorf("connect %s %v: %w", transport, dst, err)
	}
	if transport == "tls" {
		tc := tls.Client(conn, r.clientTLS(dst))
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.TLSHandshakeTimeout)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			r.conns.give(netip.Addr{})
			return nil, fmt.Errorf("tls handshake with %v: %w", dst, err)
		}
		conn = tc
	}
	// From the public listener's address (the upstream's requests to phones): what comes back on
	// the connection is read as if it reached the listener, not a binding.
	c := &streamConn{r: r, conn: conn, transport: transport, remote: dst, local: local, listener: r.isPublicListen(local), dialed: true}
	r.addConn(c)
	return c, nil
}

// dialTimeout bounds a connect; dialBackoff is how long a next hop that refused or timed out is
// given up on before the next try.
const (
	dialTimeout = 3 * time.Second
	dialBackoff = 5 * time.Second
)

// dialFrom connects to dst from local's port when it can (SO_REUSEPORT, beside the binding's own
// listener), else from any port.
func dialFrom(local, dst netip.AddrPort) (net.Conn, error) {
	if local.IsValid() {
		d := net.Dialer{Timeout: dialTimeout, Control: reuseport.Control, LocalAddr: net.TCPAddrFromAddrPort(local)}
		conn, err := d.Dial("tcp", dst.String())
		if err == nil {
			return conn, nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, err
		}
	}
	d := net.Dialer{Timeout: dialTimeout}
	return d.Dial("tcp", dst.String())
}

// clientTLS is the configuration of a connection sipcar opens to dst: TLS 1.2 or later,
// verified against the configured CA unless the operator said not to, the server's name being
// the upstream's configured name, else dst's IP address (which its certificate must then name).
func (r *Relay) clientTLS(dst netip.AddrPort) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if r.cfg.ClientTLS != nil {
		c = r.cfg.ClientTLS.Clone()
	}
	if c.ServerName == "" {
		c.ServerName = dst.Addr().String()
		if dst == r.cfg.Upstream && r.cfg.UpstreamName != "" {
			c.ServerName = r.cfg.UpstreamName
		}
	}
	return c
}

// serveBindingTCP listens on a sip binding's port for connections a peer opens to it.
func (r *Relay) serveBindingTCP(addr netip.AddrPort) (io.Closer, error) {
	l, err := reuseport.Listen("tcp", addr.String())
	if err != nil {
		wild := netip.AddrPortFrom(netip.IPv4Unspecified(), addr.Port())
		if addr.Addr().Is6() {
			wild = netip.AddrPortFrom(netip.IPv6Unspecified(), addr.Port())
		}
		if l, err = reuseport.Listen("tcp", wild.String()); err != nil {
			return nil, fmt.Errorf("listen tcp %v: %w", addr, err)
		}
	}
	r.serveStreams(l, "tcp", addr, false)
	return l, nil
}

// closeStreams closes every listener and connection.
func (r *Relay) closeStreams() {
	r.streams.mu.Lock()
	ls := r.streams.listeners
	r.streams.listeners = nil
	conns := make([]*streamConn, 0, len(r.streams.conns))
	for _, c := range r.streams.conns {
		conns = append(conns, c)
	}
	r.streams.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range conns {
		c.wmu.Lock() // startTLS may be swapping the conn
		conn := c.conn
		c.wmu.Unlock()
		conn.Close()
	}
}

// startTLS looks at the first byte of a connection to a binding port and, when it starts a TLS
// handshake, serves TLS on it. It runs in the connection's own goroutine, so a peer that connects
// and stays silent holds up nobody else.
func (c *streamConn) startTLS() bool {
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c.conn)
	first, err := br.Peek(1)
	_ = c.conn.SetReadDeadline(time.Time{})
	if err != nil {
		return false
	}
	pc := &peekedConn{Conn: c.conn, r: br}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if first[0] == 0x16 {
		c.conn, c.transport = tls.Server(pc, c.r.cfg.TLS), "tls"
		c.r.streams.mu.Lock()
		if c.r.streams.conns[connKey{"tcp", c.remote}] == c {
			delete(c.r.streams.conns, connKey{"tcp", c.remote})
		}
		c.r.streams.conns[connKey{"tls", c.remote}] = c
		c.r.streams.mu.Unlock()
	} else {
		c.conn = pc
	}
	return true
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }
