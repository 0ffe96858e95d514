package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/libp2p/go-reuseport"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// maxUDPMessage is the largest UDP payload: a message is read whole or not at all.
const maxUDPMessage = 65535

// sipSocketBuffer is the receive and send buffer of SIP UDP sockets: enough for bursts of a few
// thousand messages while a reader is busy (the kernel default of about 200 KB overflows at
// ~1,500 calls/s).
const sipSocketBuffer = 4 << 20

// udpSocket is a UDP socket sipcar receives SIP on and sends from: a listener, or the socket
// of a sip binding (held open by the binding's reservation). Closing it stops its reader.
type udpSocket struct {
	t        *transport
	conn     *net.UDPConn
	addr     netip.AddrPort // the address it stands for (a binding's may be a public address the host lacks)
	listener bool
	// transparent: a TPROXY listener; each datagram's original destination is where it was
	// going, and stands for the address it reached.
	transparent bool
}

// listenUDP opens a SIP listener. SO_REUSEPORT lets a restarted sipcar bind while the old one
// drains.
func listenUDP(network string, addr netip.AddrPort) (*net.UDPConn, error) {
	pc, err := reuseport.ListenPacket(network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen udp %v: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// serveUDP registers c under addr and reads it until it is closed. It returns nil if the
// transport is closed.
func (t *transport) serveUDP(c *net.UDPConn, addr netip.AddrPort, listener, transparent bool) *udpSocket {
	sock.RaiseBuffers(c, sipSocketBuffer, sipSocketBuffer)
	s := &udpSocket{t: t, conn: c, addr: addr, listener: listener, transparent: transparent}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.Close()
		return nil
	}
	t.udp[addr] = s
	t.wg.Add(1)
	t.mu.Unlock()
	go s.read()
	return s
}

// reserve is the server map's reservation hook for sip bindings: it opens the binding's socket
// (a UDP socket, or a TCP listener that serves TCP and TLS) and serves it until the binding is
// released.
func (t *transport) reserve(network string, addr netip.AddrPort) (io.Closer, error) {
	if network != "udp" {
		return t.serveBindingTCP(addr)
	}
	c, err := sock.ReserveUDP(addr)
	if err != nil {
		return nil, err
	}
	s := t.serveUDP(c, addr, false, false)
	if s == nil {
		return nil, errClosed
	}
	return s, nil
}

func (s *udpSocket) read() {
	defer s.t.wg.Done()
	if s.transparent {
		s.readTransparent()
		return
	}
	for {
		// Wait without a buffer, then read into one lent for the message's handling only.
		if err := sock.WaitReadable(s.conn); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		buf := s.t.bufs.Get().(*[]byte)
		n, src, err := s.conn.ReadFromUDPAddrPort(*buf)
		if err == nil && !isKeepalive((*buf)[:n]) {
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			s.t.deliver(inbound{transport: "udp", src: src, local: s.addr, listener: s.listener}, (*buf)[:n])
		}
		s.t.bufs.Put(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		// Other errors (ICMP errors surface as read errors on Linux): the socket lives on.
	}
}

// readTransparent reads a TPROXY socket: each datagram's original destination is where it was
// going, and stands for the address it reached.
func (s *udpSocket) readTransparent() {
	buf, oob := make([]byte, maxUDPMessage), make([]byte, 128)
	for {
		n, oobn, _, src, err := s.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		dst := sock.OrigDst(oob[:oobn])
		if !dst.IsValid() || isKeepalive(buf[:n]) {
			continue // not intercepted: nothing sipcar should relay
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		local := netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		s.t.deliver(inbound{transport: "udp", src: src, local: local, listener: s.listener, transparent: true}, buf[:n])
	}
}

// isKeepalive reports a datagram of CRLFs (a NAT keep-alive), which is no message.
func isKeepalive(b []byte) bool {
	for _, c := range b {
		if c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

// Close closes the socket; its reader stops.
func (s *udpSocket) Close() error {
	s.t.mu.Lock()
	if s.t.udp[s.addr] == s {
		delete(s.t.udp, s.addr)
	}
	s.t.mu.Unlock()
	return s.conn.Close()
}

// sendUDP sends msg to dst from the socket that stands for local.
func (t *transport) sendUDP(local, dst netip.AddrPort, msg []byte) error {
	t.mu.Lock()
	s := t.udp[local]
	if s == nil {
		s = t.spoof[local]
	}
	if s == nil && t.cfg.Mode == Upstream {
		s = t.listenerUDP[familyIndex(dst.Addr())] // sipcar's own address: the listener of dst's family serves it
	}
	t.mu.Unlock()
	if s == nil && t.cfg.Mode == Transparent {
		var err error
		if s, err = t.spoofSocket(local); err != nil {
			return err
		}
	}
	if s == nil {
		return fmt.Errorf("send from %v: no socket", local)
	}
	_, err := s.conn.WriteToUDPAddrPort(msg, dst)
	return err
}

// maxSpoofSockets bounds the sockets kept to send from the addresses of servers the phones
// talk to (transparent mode).
const maxSpoofSockets = 4096

// spoofSocket returns a socket that sends from a, an address that is not the host's: in
// transparent mode a phone must see a reply come from the server it addressed.
func (t *transport) spoofSocket(a netip.AddrPort) (*udpSocket, error) {
	c, err := sock.ListenTransparentUDP(a)
	if err != nil {
		return nil, err
	}
	// A transparent socket bound to a server's address also takes what the phones send to that
	// address from then on (nftables' "socket transparent" match finds it before TPROXY does):
	// it is read like the listener.
	s := &udpSocket{t: t, conn: c, addr: a, listener: true, transparent: true}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.Close()
		return nil, errClosed
	}
	if old := t.spoof[a]; old != nil {
		t.mu.Unlock()
		c.Close()
		return old, nil
	}
	if len(t.spoof) >= maxSpoofSockets {
		for k, old := range t.spoof {
			old.conn.Close()
			delete(t.spoof, k)
		}
	}
	t.spoof[a] = s
	t.wg.Add(1)
	t.mu.Unlock()
	go s.read()
	return s, nil
}
