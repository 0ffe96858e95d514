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

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// streamConn is a TCP or TLS connection sipcar reads SIP from and writes SIP to, in either
// direction: a connection a peer opened is reused for requests toward that peer (RFC 3261
// section 18.2.2, RFC 5923), and one sipcar opened serves the peer's replies.
//
// Writes go through its queue: a goroutine of its own writes them in order, so that a peer that
// reads slowly (or a connection still being dialed) holds up nobody but itself. One that lets its
// queue fill is closed.
type streamConn struct {
	t         *transport
	transport string         // "tcp" or "tls"; a sniffed binding connection's turns "tls" once (cmu)
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

	out       chan outMsg   // what the writer writes, in order
	done      chan struct{} // closed when the connection closes
	closeOnce sync.Once

	// wmu serialises writes (held during one, which writeTimeout bounds), so that a message is
	// written whole; startTLS holds it too while it swaps conn.
	wmu  sync.Mutex
	cmu  sync.Mutex // guards the following; never held during I/O
	conn net.Conn   // nil while sipcar dials it; a sniffed binding connection's becomes TLS once
	err  error      // why it closed, for messages still queued
}

// outMsg is a message queued on a connection, and what to tell when it cannot be written.
type outMsg struct {
	b      []byte
	onFail func(error)
}

// writeQueue is how many messages a connection may hold unwritten: a peer that lets that many
// pile up does not read, and its connection is closed rather than grow without bound.
const writeQueue = 256

// writeTimeout bounds one write: a peer whose window stays shut that long is gone.
const writeTimeout = 5 * time.Second

type connKey struct {
	transport string
	remote    netip.AddrPort
}

// streamState holds the transport's TCP/TLS listeners and connections.
type streamState struct {
	mu        sync.Mutex // guards the following
	closed    bool
	listeners []net.Listener
	conns     map[connKey]*streamConn
	failed    map[netip.AddrPort]time.Time // next hops whose last connect failed, and when
}

func (t *transport) newConn(conn net.Conn, transport string, remote, local netip.AddrPort) *streamConn {
	return &streamConn{t: t, conn: conn, transport: transport, remote: remote, local: local,
		out: make(chan outMsg, writeQueue), done: make(chan struct{})}
}

// serveStreams accepts connections on l until it is closed.
func (t *transport) serveStreams(l net.Listener, transport string, local netip.AddrPort, listener bool) {
	t.streams.mu.Lock()
	t.streams.listeners = append(t.streams.listeners, l)
	t.streams.mu.Unlock()
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					t.metrics.connsRefused.WithLabelValues("descriptors").Inc()
					t.logOnce(netip.AddrPort{}, "too many open files: a connection could not be accepted; raise the file descriptor limit or lower SIPCAR_MAX_CONNECTIONS", "listener", local)
				}
				time.Sleep(10 * time.Millisecond) // EMFILE and the like: back off, do not spin
				continue
			}
			t.accepted(c, transport, local, listener)
		}
	}()
}

// accepted takes a connection a peer opened, unless a cap refuses it.
func (t *transport) accepted(c net.Conn, transport string, local netip.AddrPort, listener bool) {
	remote := addrPortOf(c.RemoteAddr())
	if why := t.limits.take(remote.Addr(), t.room()); why != "" {
		// Closed before anything is read or a handshake is spent on it.
		t.metrics.connsRefused.WithLabelValues(why).Inc()
		t.logOnce(remote, "connection refused: cap reached", "src", remote, "cap", why)
		c.Close()
		return
	}
	if _, ok := c.(*tls.Conn); ok {
		transport = "tls"
	}
	sc := t.newConn(c, transport, remote, local)
	sc.listener, sc.sniff, sc.counted = listener, !listener && t.cfg.TLS != nil, remote.Addr()
	if listener && t.cfg.Mode == Transparent {
		// TPROXY keeps the original destination as the local address; REDIRECT says it through
		// SO_ORIGINAL_DST.
		sc.local, sc.transparent = addrPortOf(c.LocalAddr()), true
		if dst, ok := sock.OriginalDst(c); ok && dst != sc.local && !dst.Addr().IsLoopback() {
			sc.local = dst
		}
	}
	if !t.register(sc) {
		return
	}
	t.wg.Add(2)
	go sc.writeLoop()
	go func() {
		defer t.wg.Done()
		sc.read()
	}()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// register enters c in the table of connections; false (c closed) when the transport closed.
func (t *transport) register(c *streamConn) bool {
	t.streams.mu.Lock()
	if t.streams.closed {
		t.streams.mu.Unlock()
		c.close(errClosed)
		return false
	}
	t.streams.conns[connKey{c.transport, c.remote}] = c
	t.streams.mu.Unlock()
	return true
}

// read frames messages from the connection until it closes, breaks framing or runs out of
// time: a TLS handshake has TLSHandshakeTimeout, a message MessageTimeout from its first byte to
// its last (however slowly the bytes trickle), and a connection that carries nothing at all
// ConnIdleTimeout. It closes the connection when it returns.
func (c *streamConn) read() {
	defer c.close(errClosed)
	if c.sniff && !c.startTLS() {
		return
	}
	if !c.handshake() {
		return
	}
	t := c.t
	br := bufio.NewReaderSize(c.conn, 16<<10)
	buf := make([]byte, 0, 16<<10)
	chunk := make([]byte, 16<<10)
	var started time.Time // when the first byte of the message in buf arrived
	for {
		var ok bool
		if buf, ok = c.frames(buf); !ok {
			return
		}
		now := time.Now()
		deadline := now.Add(t.cfg.ConnIdleTimeout)
		if len(buf) == 0 {
			started = time.Time{}
		} else {
			if started.IsZero() {
				started = now
			}
			deadline = started.Add(t.cfg.MessageTimeout)
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
				t.metrics.connsClosed.WithLabelValues(why).Inc()
				t.logOnce(c.remote, "connection timed out", "remote", c.remote, "reason", why)
			}
			return
		}
	}
}

// handshake completes the TLS handshake of a connection a peer opened, within
// TLSHandshakeTimeout. It reports false when the connection must close.
func (c *streamConn) handshake() bool {
	tc, ok := c.conn.(*tls.Conn)
	if !ok || c.dialed {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.t.cfg.TLSHandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err == nil {
		return true
	}
	why := "handshake-failed"
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		why = "handshake-timeout"
	}
	c.t.metrics.connsClosed.WithLabelValues(why).Inc()
	c.t.log.Debug("TLS handshake failed", "remote", c.remote, "err", err)
	return false
}

// frames hands every whole message at the start of buf to the relay, answers keep-alive pings
// and returns what is left. It reports false when framing broke: the connection cannot be
// resynchronised, so the peer is answered (400 or 513) and the connection closed.
func (c *streamConn) frames(buf []byte) ([]byte, bool) {
	t := c.t
	for len(buf) > 0 {
		n, kind, err := nextFrame(buf)
		if err != nil {
			t.metrics.malformed.WithLabelValues(c.transport).Inc()
			t.metrics.dropped.WithLabelValues("malformed").Inc()
			t.logOnce(c.remote, "stream framing broken: answering and closing", "remote", c.remote, "err", err)
			if out := t.rep.frameErrorReply(buf, c.remote, err); out != nil {
				t.metrics.answered.WithLabelValues(strconv.Itoa(frameErrorCode(err))).Inc()
				_ = c.writeNow(out) // the last thing on this connection: written before it closes
			}
			t.metrics.connsClosed.WithLabelValues("framing").Inc()
			return buf, false
		}
		switch kind {
		case frameNeedMore:
			return buf, true
		case framePing:
			_ = c.enqueue([]byte("\r\n"), nil)
		case frameMessage:
			t.deliver(inbound{transport: c.transport, src: c.remote, local: c.local, listener: c.listener,
				transparent: c.transparent, conn: c}, buf[:n])
		}
		buf = append(buf[:0], buf[n:]...)
	}
	return buf, true
}

// isTimeout reports a deadline that ran out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// enqueue queues msg for the writer. onFail, when set, is told if it cannot be written. A
// connection whose queue is full does not read: it is closed.
//
// The check that the connection is open and the queueing happen under cmu, which close holds
// while it closes done: a message is either refused here or queued before done closes, so the
// drain after close (writeLoop's, or failQueued's when a dial fails) always sees it. Without
// that, a connect refused in the moment between the two would leave the message queued on a
// dead connection and its sender without the 503.
func (c *streamConn) enqueue(msg []byte, onFail func(error)) error {
	c.cmu.Lock()
	select {
	case <-c.done:
		c.cmu.Unlock()
		return fmt.Errorf("connection to %v closed", c.remote)
	default:
	}
	select {
	case c.out <- outMsg{b: msg, onFail: onFail}:
		c.cmu.Unlock()
		return nil
	default:
	}
	c.cmu.Unlock()
	c.t.metrics.connsClosed.WithLabelValues("write-queue").Inc()
	err := fmt.Errorf("connection to %v: %d messages unwritten: closed", c.remote, writeQueue)
	c.close(err)
	return err
}

// writeLoop writes queued messages until the connection closes; then it tells the senders of
// those left why they were not written.
func (c *streamConn) writeLoop() {
	defer c.t.wg.Done()
	for {
		select {
		case m := <-c.out:
			if err := c.writeNow(m.b); err != nil {
				if m.onFail != nil {
					m.onFail(err)
				}
				c.close(err) // a stream that lost part of a message cannot go on
			}
		case <-c.done:
			for {
				select {
				case m := <-c.out:
					if m.onFail != nil {
						m.onFail(c.closeErr())
					}
				default:
					return
				}
			}
		}
	}
}

// writeNow writes one message whole.
func (c *streamConn) writeNow(msg []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	conn := c.netConn()
	_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := conn.Write(msg)
	return err
}

func (c *streamConn) netConn() net.Conn {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	return c.conn
}

// close closes the connection once, takes it out of the table and gives back its place; err is
// what senders of messages still queued are told.
func (c *streamConn) close(err error) {
	c.closeOnce.Do(func() {
		c.cmu.Lock()
		conn, transport := c.conn, c.transport
		c.err = err
		close(c.done) // under cmu: see enqueue
		c.cmu.Unlock()
		if conn != nil {
			conn.Close()
		}
		t := c.t
		t.streams.mu.Lock()
		if k := (connKey{transport, c.remote}); t.streams.conns[k] == c {
			delete(t.streams.conns, k)
		}
		t.streams.mu.Unlock()
		t.limits.give(c.counted)
	})
}

func (c *streamConn) closeErr() error {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	return c.err
}

// serveBindingTCP listens on a sip binding's port for connections a peer opens to it.
func (t *transport) serveBindingTCP(addr netip.AddrPort) (io.Closer, error) {
	l, err := sock.ReserveTCP(addr)
	if err != nil {
		return nil, err
	}
	t.serveStreams(l, "tcp", addr, false)
	return l, nil
}

// closeStreams closes every listener and connection.
func (t *transport) closeStreams() {
	t.streams.mu.Lock()
	t.streams.closed = true
	ls := t.streams.listeners
	t.streams.listeners = nil
	conns := make([]*streamConn, 0, len(t.streams.conns))
	for _, c := range t.streams.conns {
		conns = append(conns, c)
	}
	t.streams.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range conns {
		c.close(errClosed)
	}
}

// startTLS looks at the first byte of a connection to a binding port and, when it starts a TLS
// handshake, serves TLS on it. It runs in the connection's own goroutine, so a peer that connects
// and stays silent holds up nobody else.
func (c *streamConn) startTLS() bool {
	_ = c.conn.SetReadDeadline(time.Now().Add(c.t.cfg.TLSHandshakeTimeout))
	br := bufio.NewReader(c.conn)
	first, err := br.Peek(1)
	_ = c.conn.SetReadDeadline(time.Time{})
	if err != nil {
		return false
	}
	pc := &peekedConn{Conn: c.conn, r: br}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if first[0] != 0x16 {
		c.conn = pc
		return true
	}
	c.conn, c.transport = tls.Server(pc, c.t.cfg.TLS), "tls"
	t := c.t
	t.streams.mu.Lock()
	if t.streams.conns[connKey{"tcp", c.remote}] == c {
		delete(t.streams.conns, connKey{"tcp", c.remote})
	}
	t.streams.conns[connKey{"tls", c.remote}] = c
	t.streams.mu.Unlock()
	return true
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }
