package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/libp2p/go-reuseport"
)

// Connections sipcar opens itself: a message for a next hop over TCP or TLS with no connection
// queues on a new one, which a goroutine of its own dials and handshakes, so that no reader ever
// waits for a peer that does not answer.

// connected returns the transport of a live (or dialing) TCP or TLS connection with dst, TLS
// first, or "".
func (t *transport) connected(dst netip.AddrPort) string {
	t.streams.mu.Lock()
	defer t.streams.mu.Unlock()
	for _, tr := range [...]string{"tls", "tcp"} {
		if t.streams.conns[connKey{tr, dst}] != nil {
			return tr
		}
	}
	return ""
}

// sendStream queues msg to dst over TCP or TLS: on a live connection with dst when there is one,
// else on a new one from local's address, which a goroutine dials.
func (t *transport) sendStream(local netip.AddrPort, transport string, dst netip.AddrPort, msg []byte, onFail func(error)) error {
	t.streams.mu.Lock()
	c := t.streams.conns[connKey{transport, dst}]
	if c == nil {
		var err error
		if c, err = t.dialLocked(local, transport, dst); err != nil {
			t.streams.mu.Unlock()
			return err
		}
	}
	t.streams.mu.Unlock()
	return c.enqueue(msg, onFail)
}

// dialLocked starts a connection to dst that messages queue on while a goroutine dials it. A
// next hop that failed a moment ago fails at once. Callers hold t.streams.mu.
func (t *transport) dialLocked(local netip.AddrPort, transport string, dst netip.AddrPort) (*streamConn, error) {
	if t.streams.closed {
		return nil, errClosed
	}
	if at, ok := t.streams.failed[dst]; ok && time.Since(at) < dialBackoff {
		return nil, fmt.Errorf("connect %s %v: failed %v ago", transport, dst, time.Since(at).Round(time.Millisecond))
	}
	if why := t.limits.take(netip.Addr{}, t.room()); why != "" {
		t.metrics.connsRefused.WithLabelValues(why).Inc()
		return nil, fmt.Errorf("connect %s %v: connection cap reached (%s)", transport, dst, why)
	}
	c := t.newConn(nil, transport, dst, local)
	// From the public listener's address (the upstream's requests to phones): what comes back on
	// the connection is read as if it reached the listener, not a binding.
	c.listener, c.dialed = t.publicListen(local), true
	t.streams.conns[connKey{transport, dst}] = c
	t.wg.Add(1)
	go c.dial()
	return c, nil
}

// dial connects and, for TLS, handshakes; then it serves the connection like one a peer opened.
// When it fails, the next hop is remembered as failed and what was queued is failed too.
func (c *streamConn) dial() {
	t := c.t
	defer t.wg.Done()
	conn, err := t.connect(c.local, c.transport, c.remote)
	if err != nil {
		t.streams.mu.Lock()
		if len(t.streams.failed) > 10000 {
			clear(t.streams.failed)
		}
		t.streams.failed[c.remote] = time.Now()
		t.streams.mu.Unlock()
		t.log.Debug("connect failed", "to", c.remote, "transport", c.transport, "err", err)
		c.close(err)
		c.failQueued(err)
		return
	}
	c.cmu.Lock()
	c.conn = conn
	c.cmu.Unlock()
	select {
	case <-c.done: // closed while it dialed (shutdown)
		conn.Close()
		c.failQueued(errClosed)
		return
	default:
	}
	t.wg.Add(1)
	go c.writeLoop()
	c.read()
}

// failQueued tells the senders of what is still queued on a connection that never opened.
func (c *streamConn) failQueued(err error) {
	for {
		select {
		case m := <-c.out:
			if m.onFail != nil {
				m.onFail(err)
			}
		default:
			return
		}
	}
}

// connect opens a connection to dst from local's port (a TLS one handshaken).
func (t *transport) connect(local netip.AddrPort, transport string, dst netip.AddrPort) (net.Conn, error) {
	conn, err := dialFrom(t.bindAddr(local), dst)
	if err != nil {
		return nil, fmt.Errorf("connect %s %v: %w", transport, dst, err)
	}
	if transport != "tls" {
		return conn, nil
	}
	tc := tls.Client(conn, t.clientTLS(dst))
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.TLSHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tls handshake with %v: %w", dst, err)
	}
	return tc, nil
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
		if isTimeout(err) {
			return nil, err
		}
	}
	d := net.Dialer{Timeout: dialTimeout}
	return d.Dial("tcp", dst.String())
}

// clientTLS is the configuration of a connection sipcar opens to dst: TLS 1.2 or later,
// verified against the configured CA unless the operator said not to, the server's name being
// the upstream's configured name, else dst's IP address (which its certificate must then name).
func (t *transport) clientTLS(dst netip.AddrPort) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.cfg.ClientTLS != nil {
		c = t.cfg.ClientTLS.Clone()
	}
	if c.ServerName == "" {
		c.ServerName = dst.Addr().String()
		if dst == t.cfg.Upstream && t.cfg.UpstreamName != "" {
			c.ServerName = t.cfg.UpstreamName
		}
	}
	return c
}
