package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The peers of the attack tests: a Go phone over UDP or TCP whose calls report their outcome
// instead of failing the test (an attack may make them fail, and the figures are taken first),
// the targets an attacker wants sipcar to reach, and crowds of connections and sources.

// sipEndpoint is a Go phone's (or an attacker's) SIP transport toward sipcar: a UDP socket, or
// a TCP connection to one of sipcar's listeners.
type sipEndpoint interface {
	local() netip.AddrPort
	// viaTransport is the transport as a Via writes it: UDP or TCP.
	viaTransport() string
	// send sends msg to dst; a connection has one destination and ignores dst.
	send(dst netip.AddrPort, msg []byte) error
	// next returns the next message for which want is true (nil: any), skipping others, or
	// errNothing after timeout.
	next(timeout time.Duration, want func(*sipMsg) bool) (*sipMsg, error)
	Close() error
}

type udpEndpoint struct{ *udpPeer }

func (u udpEndpoint) local() netip.AddrPort { return u.addr }
func (u udpEndpoint) viaTransport() string  { return "UDP" }
func (u udpEndpoint) send(dst netip.AddrPort, msg []byte) error {
	_, err := u.conn.WriteToUDPAddrPort(msg, dst)
	return err
}
func (u udpEndpoint) next(timeout time.Duration, want func(*sipMsg) bool) (*sipMsg, error) {
	return u.tryRecv(timeout, want)
}
func (u udpEndpoint) Close() error { return u.conn.Close() }

// openUDPEndpoint opens a UDP endpoint at addr inside ns; it is closed in t.Cleanup (closing
// it earlier is harmless).
func openUDPEndpoint(t *testing.T, ns *netns, addr netip.AddrPort) (udpEndpoint, error) {
	c, err := ns.listenUDP(addr.String())
	if err != nil {
		return udpEndpoint{}, err
	}
	t.Cleanup(func() { c.Close() })
	return udpEndpoint{&udpPeer{conn: c, addr: addr}}, nil
}

type tcpEndpoint struct {
	conn net.Conn
	r    *bufio.Reader
	addr netip.AddrPort
}

func (c *tcpEndpoint) local() netip.AddrPort                   { return c.addr }
func (c *tcpEndpoint) viaTransport() string                    { return "TCP" }
func (c *tcpEndpoint) send(_ netip.AddrPort, msg []byte) error { return writeAll(c.conn, msg) }
func (c *tcpEndpoint) Close() error                            { return c.conn.Close() }

func (c *tcpEndpoint) next(timeout time.Duration, want func(*sipMsg) bool) (*sipMsg, error) {
	deadline := time.Now().Add(timeout)
	for {
		m, err := readStreamMsg(c.conn, c.r, deadline)
		if err != nil {
			return nil, err
		}
		if want == nil || want(m) {
			return m, nil
		}
	}
}

func writeAll(c net.Conn, msg []byte) error {
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Write(msg)
	return err
}

// dialTCPEndpoint connects from src (any port) inside ns to dst over TCP; the connection is
// closed in t.Cleanup.
func dialTCPEndpoint(t *testing.T, ns *netns, src netip.Addr, dst netip.AddrPort) (*tcpEndpoint, error) {
	c, err := dialTCPFrom(ns, src, dst, 5*time.Second)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return &tcpEndpoint{conn: c, r: bufio.NewReader(c), addr: netip.MustParseAddrPort(c.LocalAddr().String())}, nil
}

// dialTCPFrom connects from src (any port) inside ns to dst.
func dialTCPFrom(ns *netns, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.do(func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		var err error
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	return c, err
}

// readStreamMsg reads one SIP message framed by its Content-Length from a stream, skipping
// keep-alive CRLFs, by deadline.
func readStreamMsg(c net.Conn, r *bufio.Reader, deadline time.Time) (*sipMsg, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	var head bytes.Buffer
	length := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && head.Len() == 0 {
				return nil, errNothing
			}
			return nil, fmt.Errorf("read from %v: %w (read so far: %q)", c.RemoteAddr(), err, head.String()+line)
		}
		if head.Len() == 0 && strings.TrimSpace(line) == "" {
			continue
		}
		head.WriteString(line)
		if line == "\r\n" {
			break
		}
		if n, v, ok := strings.Cut(line, ":"); ok {
			if n = strings.ToLower(strings.TrimSpace(n)); n == "content-length" || n == "l" {
				length, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read body from %v: %w", c.RemoteAddr(), err)
	}
	return parseSIP(append(head.Bytes(), body...))
}

// contactOf is the Contact URI a Go phone gives for its endpoint.
func contactOf(ep sipEndpoint, user string) string {
	if ep.viaTransport() == "TCP" {
		return "<sip:" + user + "@" + ep.local().String() + ";transport=tcp>"
	}
	return "<sip:" + user + "@" + ep.local().String() + ">"
}

// placeCall makes a whole call from ep through sipcar's public listener to the PBX: INVITE with
// SDP, the 200 OK, ACK, BYE and its 200. It returns why the call failed, or nil.
func placeCall(ep sipEndpoint, callID string, timeout time.Duration) error {
	loc := ep.local()
	via := "Via: SIP/2.0/" + ep.viaTransport() + " " + loc.String() + ";branch=z9hG4bK" + callID
	from := "From: <sip:phone@198.51.100.1>;tag=" + callID
	inv := buildSIP("INVITE sip:pbx@198.51.100.1:5060 SIP/2.0", []string{via, from, "To: <sip:pbx@198.51.100.1>",
		"Call-ID: " + callID, "CSeq: 1 INVITE", "Contact: " + contactOf(ep, "phone"), "Max-Forwards: 70",
		"Content-Type: application/sdp"}, offer(netip.AddrPortFrom(loc.Addr(), 7000)))
	if err := ep.send(sipcarListen, inv); err != nil {
		return fmt.Errorf("send INVITE: %w", err)
	}
	final, err := ep.next(timeout, func(m *sipMsg) bool {
		return isResponse("INVITE", 0)(m) && m.header("Call-ID") == callID
	})
	if err != nil {
		return fmt.Errorf("no final answer to the INVITE within %v: %w", timeout, err)
	}
	if final.status() != 200 {
		_ = ep.send(sipcarListen, buildSIP("ACK sip:pbx@198.51.100.1:5060 SIP/2.0", []string{via, from,
			"To: " + final.header("To"), "Call-ID: " + callID, "CSeq: 1 ACK", "Max-Forwards: 70"}, ""))
		return fmt.Errorf("INVITE answered %q (Warning %q)", final.start, final.header("Warning"))
	}
	target, err := uriAddr(final.contactURI())
	if err != nil {
		return err
	}
	inDialog := func(method string, cseq int) []byte {
		return buildSIP(method+" "+final.contactURI()+" SIP/2.0", []string{
			"Via: SIP/2.0/" + ep.viaTransport() + " " + loc.String() + ";branch=z9hG4bK" + callID + method,
			from, "To: " + final.header("To"), "Call-ID: " + callID, fmt.Sprintf("CSeq: %d %s", cseq, method), "Max-Forwards: 70",
		}, "")
	}
	if err := ep.send(target, inDialog("ACK", 1)); err != nil {
		return fmt.Errorf("send ACK: %w", err)
	}
	if err := ep.send(target, inDialog("BYE", 2)); err != nil {
		return fmt.Errorf("send BYE: %w", err)
	}
	ok, err := ep.next(timeout, func(m *sipMsg) bool {
		return isResponse("BYE", 0)(m) && m.header("Call-ID") == callID
	})
	if err != nil {
		return fmt.Errorf("no answer to the BYE within %v: %w", timeout, err)
	}
	if ok.status() != 200 {
		return fmt.Errorf("BYE answered %q", ok.start)
	}
	return nil
}

// phoneCall opens a UDP endpoint at src in the phone's namespace and places a call from it.
func (l *upstreamLab) phoneCall(src netip.AddrPort, callID string) error {
	ep, err := openUDPEndpoint(l.t, l.phone, src)
	if err != nil {
		return err
	}
	defer ep.Close()
	return placeCall(ep, callID, 15*time.Second)
}

// phoneCallTCP connects from src to sipcar's public TCP listener and places a call over it.
func (l *upstreamLab) phoneCallTCP(src netip.Addr, callID string) error {
	ep, err := dialTCPEndpoint(l.t, l.phone, src, sipcarListen)
	if err != nil {
		return fmt.Errorf("connect to sipcar: %w", err)
	}
	defer ep.Close()
	return placeCall(ep, callID, 15*time.Second)
}

// invite builds an INVITE from ep to sipcar's public listener offering streams audio streams
// at the endpoint's address (ports 10000 and up).
func invite(ep sipEndpoint, callID string, streams int) []byte {
	loc := ep.local()
	var sdp strings.Builder
	fmt.Fprintf(&sdp, "v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n", loc.Addr(), loc.Addr())
	for i := range streams {
		fmt.Fprintf(&sdp, "m=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n", 10000+2*i)
	}
	return buildSIP("INVITE sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/" + ep.viaTransport() + " " + loc.String() + ";branch=z9hG4bK" + callID,
		"From: <sip:caller@198.51.100.1>;tag=" + callID,
		"To: <sip:pbx@198.51.100.1>",
		"Call-ID: " + callID,
		"CSeq: 1 INVITE",
		"Contact: " + contactOf(ep, "caller"),
		"Max-Forwards: 70",
		"Content-Type: application/sdp",
	}, sdp.String())
}

// firstAnswer waits for the first response to the INVITE of callID that is not 100 Trying.
func firstAnswer(ep sipEndpoint, callID string, timeout time.Duration) (*sipMsg, error) {
	return ep.next(timeout, func(m *sipMsg) bool {
		return m.status() > 100 && m.cseqMethod() == "INVITE" && m.header("Call-ID") == callID
	})
}

// ackFinal acknowledges a final error response to an INVITE sent with [invite].
func ackFinal(ep sipEndpoint, resp *sipMsg) {
	callID := resp.header("Call-ID")
	_ = ep.send(sipcarListen, buildSIP("ACK sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/" + ep.viaTransport() + " " + ep.local().String() + ";branch=z9hG4bK" + callID,
		"From: <sip:caller@198.51.100.1>;tag=" + callID,
		"To: " + resp.header("To"),
		"Call-ID: " + callID,
		"CSeq: 1 ACK",
		"Max-Forwards: 70",
	}, ""))
}

// register sends a REGISTER with contacts (the endpoint's own when empty) through sipcar and
// returns the final answer.
func register(ep sipEndpoint, user, callID, contacts string, timeout time.Duration) (*sipMsg, error) {
	if contacts == "" {
		contacts = contactOf(ep, user)
	}
	msg := buildSIP("REGISTER sip:198.51.100.1 SIP/2.0", []string{
		"Via: SIP/2.0/" + ep.viaTransport() + " " + ep.local().String() + ";branch=z9hG4bK" + callID,
		"From: <sip:" + user + "@198.51.100.1>;tag=" + callID,
		"To: <sip:" + user + "@198.51.100.1>",
		"Call-ID: " + callID,
		"CSeq: 1 REGISTER",
		"Contact: " + contacts,
		"Expires: 3600",
		"Max-Forwards: 70",
	}, "")
	if err := ep.send(sipcarListen, msg); err != nil {
		return nil, fmt.Errorf("send REGISTER (%d bytes): %w", len(msg), err)
	}
	return ep.next(timeout, func(m *sipMsg) bool {
		return isResponse("REGISTER", 0)(m) && m.header("Call-ID") == callID
	})
}

// sink is a target an attacker wants sipcar to reach: a TCP listener and a UDP socket at one
// address and port, counting what arrives at either.
type sink struct {
	name string
	addr netip.AddrPort
	ln   net.Listener
	udp  *net.UDPConn

	mu                                  sync.Mutex // guards the following
	conns                               []net.Conn
	accepted, tcpBytes, datagrams, udpB int
	first                               string // the first bytes that arrived

	wg sync.WaitGroup
}

// sink opens a target inside ns; it is closed in t.Cleanup.
func (tb *testbed) sink(ns *netns, name string, addr netip.AddrPort) *sink {
	tb.t.Helper()
	s := &sink{name: name, addr: addr}
	var err error
	if s.ln, err = ns.listenTCP(addr.String()); err != nil {
		tb.t.Fatal(err)
	}
	if s.udp, err = ns.listenUDP(addr.String()); err != nil {
		s.ln.Close()
		tb.t.Fatal(err)
	}
	tb.t.Cleanup(func() {
		s.ln.Close()
		s.udp.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted++
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					s.note(&s.tcpBytes, buf[:n])
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 65535)
		for {
			n, _, err := s.udp.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			s.mu.Lock()
			s.datagrams++
			s.mu.Unlock()
			s.note(&s.udpB, buf[:n])
		}
	}()
	return s
}

func (s *sink) note(counter *int, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	*counter += len(b)
	if s.first == "" && len(b) > 0 {
		s.first = string(b[:min(len(b), 60)])
	}
}

// reached reports whether anything arrived.
func (s *sink) reached() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted > 0 || s.datagrams > 0
}

func (s *sink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := fmt.Sprintf("%s %v: %d TCP connections (%d bytes), %d UDP datagrams (%d bytes)",
		s.name, s.addr, s.accepted, s.tcpBytes, s.datagrams, s.udpB)
	if s.first != "" {
		out += fmt.Sprintf(", first bytes %q", s.first)
	}
	return out
}

// crowd is many TCP connections from several source addresses to one address, each watched by
// a reader that notes when the far end closes it.
type crowd struct {
	conns      []*crowdConn
	dialFailed int
	firstErr   error
}

type crowdConn struct {
	net.Conn
	src    netip.Addr
	closed chan struct{} // closed when a read fails: the far end closed or reset the connection
	sent   int           // bytes trickled so far
}

func (c *crowdConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// openCrowd connects perSource times from each source inside ns to dst; the connections are
// closed in t.Cleanup.
func (tb *testbed) openCrowd(ns *netns, srcs []netip.Addr, perSource int, dst netip.AddrPort) *crowd {
	tb.t.Helper()
	cr := &crowd{}
	var wg sync.WaitGroup
	tb.t.Cleanup(func() {
		for _, c := range cr.conns {
			c.Close()
		}
		wg.Wait()
	})
	err := ns.do(func() error {
		start := time.Now()
		for range perSource {
			for _, src := range srcs {
				if time.Since(start) > 2*time.Minute {
					return fmt.Errorf("connecting took over 2 minutes (%d connections made)", len(cr.conns))
				}
				d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
				c, err := d.Dial("tcp", dst.String())
				if err != nil {
					cr.dialFailed++
					if cr.firstErr == nil {
						cr.firstErr = err
					}
					continue
				}
				cc := &crowdConn{Conn: c, src: src, closed: make(chan struct{})}
				cr.conns = append(cr.conns, cc)
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer close(cc.closed)
					buf := make([]byte, 4096)
					for {
						if _, err := cc.Read(buf); err != nil {
							return
						}
					}
				}()
			}
		}
		return nil
	})
	if err != nil {
		tb.t.Fatal(err)
	}
	return cr
}

// alive counts the connections sipcar has not closed, in all and per source.
func (cr *crowd) alive() (int, map[netip.Addr]int) {
	total, by := 0, make(map[netip.Addr]int)
	for _, c := range cr.conns {
		if !c.isClosed() {
			total++
			by[c.src]++
		}
	}
	return total, by
}

// maxPerSource is the largest count of by.
func maxPerSource(by map[netip.Addr]int) int {
	m := 0
	for _, n := range by {
		m = max(m, n)
	}
	return m
}

// trickle writes msg one byte a second on every open connection of the crowd until stop is
// closed: a slowloris. It returns when stop is closed.
func (cr *crowd) trickle(stop <-chan struct{}, msg []byte, written *atomic.Int64) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for _, c := range cr.conns {
			if c.isClosed() || c.sent >= len(msg) {
				continue
			}
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if n, _ := c.Write(msg[c.sent : c.sent+1]); n == 1 {
				c.sent++
				written.Add(1)
			}
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// udpSources opens a UDP socket at each address inside ns (port 5060) with a reader that counts
// the datagrams that come back and notes the largest; they are closed in t.Cleanup.
func (tb *testbed) udpSources(ns *netns, addrs []netip.Addr) []*udpSource {
	tb.t.Helper()
	var srcs []*udpSource
	err := ns.do(func() error {
		for _, a := range addrs {
			ap := netip.AddrPortFrom(a, 5060)
			c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
			if err != nil {
				return err
			}
			srcs = append(srcs, &udpSource{conn: c, addr: ap, done: make(chan struct{})})
		}
		return nil
	})
	tb.t.Cleanup(func() {
		for _, s := range srcs {
			s.conn.Close()
			<-s.done
		}
	})
	if err != nil {
		for _, s := range srcs {
			close(s.done)
		}
		tb.t.Fatal(err)
	}
	for _, s := range srcs {
		go s.read()
	}
	return srcs
}

// udpSource is one attacking source of a flood.
type udpSource struct {
	conn *net.UDPConn
	addr netip.AddrPort
	done chan struct{}

	replies, replyBytes, largest atomic.Int64
}

func (s *udpSource) read() {
	defer close(s.done)
	buf := make([]byte, 65535)
	for {
		n, _, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.replies.Add(1)
		s.replyBytes.Add(int64(n))
		for {
			old := s.largest.Load()
			if int64(n) <= old || s.largest.CompareAndSwap(old, int64(n)) {
				break
			}
		}
	}
}
