package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Raw SIP for what no SIP tool sends on demand: malformed messages, exact retransmissions, a
// PBX that answers twice. Messages are built as text and read with a small parser of their own;
// sipgo checks that what sipcar sends parses.

// sipMsg is a received SIP message.
type sipMsg struct {
	raw   []byte
	start string // the start line
	head  []string
	body  string
	from  netip.AddrPort // where it came from
}

// compactNames maps compact header names (RFC 3261 section 7.3.3) to their full names.
var compactNames = map[string]string{
	"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
	"c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding",
}

// parseSIP splits a message into its start line, header lines and body, and checks that sipgo
// parses it too.
func parseSIP(b []byte) (*sipMsg, error) {
	if _, err := sip.ParseMessage(b); err != nil {
		return nil, fmt.Errorf("sipgo cannot parse it: %w\n%s", err, b)
	}
	s := string(b)
	head, body, ok := strings.Cut(s, "\r\n\r\n")
	if !ok {
		return nil, fmt.Errorf("no end of headers:\n%s", b)
	}
	lines := strings.Split(head, "\r\n")
	return &sipMsg{raw: b, start: lines[0], head: lines[1:], body: body}, nil
}

// headers returns the values of every header line named name (or its compact form), in order.
func (m *sipMsg) headers(name string) []string {
	name = strings.ToLower(name)
	var vs []string
	for _, l := range m.head {
		n, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n = strings.ToLower(strings.TrimSpace(n))
		if full, ok := compactNames[n]; ok {
			n = full
		}
		if n == name {
			vs = append(vs, strings.TrimSpace(v))
		}
	}
	return vs
}

// header returns the first value of a header, or "".
func (m *sipMsg) header(name string) string {
	if vs := m.headers(name); len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// status returns a response's status code, 0 for a request.
func (m *sipMsg) status() int {
	code, ok := strings.CutPrefix(m.start, "SIP/2.0 ")
	if !ok || len(code) < 3 {
		return 0
	}
	n, _ := strconv.Atoi(code[:3])
	return n
}

// method returns a request's method, "" for a response.
func (m *sipMsg) method() string {
	if m.status() != 0 {
		return ""
	}
	meth, _, _ := strings.Cut(m.start, " ")
	return meth
}

// cseqMethod returns the method of the CSeq header.
func (m *sipMsg) cseqMethod() string {
	f := strings.Fields(m.header("CSeq"))
	if len(f) != 2 {
		return ""
	}
	return f[1]
}

var (
	sdpConn  = regexp.MustCompile(`(?m)^c=IN IP[46] (\S+)\r?$`)
	sdpAudio = regexp.MustCompile(`(?m)^m=audio (\d+) `)
)

// media returns the address and port of the first audio stream of the message's SDP.
func (m *sipMsg) media() (netip.AddrPort, error) {
	c, a := sdpConn.FindStringSubmatch(m.body), sdpAudio.FindStringSubmatch(m.body)
	if c == nil || a == nil {
		return netip.AddrPort{}, fmt.Errorf("no c= or m=audio in the SDP:\n%s", m.body)
	}
	return netip.ParseAddrPort(c[1] + ":" + a[1])
}

var uriHostPort = regexp.MustCompile(`sips?:(?:[^@>;]*@)?([0-9.]+)(?::(\d+))?`)

// uriAddr returns the IPv4 address and port a SIP URI names (port 5060 when it names none).
func uriAddr(uri string) (netip.AddrPort, error) {
	m := uriHostPort.FindStringSubmatch(uri)
	if m == nil {
		return netip.AddrPort{}, fmt.Errorf("no IPv4 host in URI %q", uri)
	}
	port := m[2]
	if port == "" {
		port = "5060"
	}
	return netip.ParseAddrPort(m[1] + ":" + port)
}

// contactURI returns the URI of the message's Contact, without angle brackets.
func (m *sipMsg) contactURI() string {
	c := m.header("Contact")
	if i := strings.IndexByte(c, '<'); i >= 0 {
		if j := strings.IndexByte(c[i:], '>'); j > 0 {
			return c[i+1 : i+j]
		}
	}
	uri, _, _ := strings.Cut(c, ";")
	return uri
}

// buildSIP makes a message of a start line, header lines and a body, with Content-Length.
func buildSIP(start string, headers []string, body string) []byte {
	var b bytes.Buffer
	b.WriteString(start + "\r\n")
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	return b.Bytes()
}

// offer is an SDP offer or answer for one PCMA audio stream at addr.
func offer(addr netip.AddrPort) string {
	return fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
		addr.Addr(), addr.Addr(), addr.Port())
}

// response answers req: its Vias, From, Call-ID and CSeq, its To with toTag added when it has
// none, then extra headers and body.
func response(req *sipMsg, code int, reason, toTag string, extra []string, body string) []byte {
	var hs []string
	for _, v := range req.headers("Via") {
		hs = append(hs, "Via: "+v)
	}
	to := req.header("To")
	if !strings.Contains(to, ";tag=") {
		to += ";tag=" + toTag
	}
	hs = append(hs, "From: "+req.header("From"), "To: "+to, "Call-ID: "+req.header("Call-ID"), "CSeq: "+req.header("CSeq"))
	hs = append(hs, extra...)
	return buildSIP(fmt.Sprintf("SIP/2.0 %d %s", code, reason), hs, body)
}

// viaAddr returns the sent-by of the message's top Via.
func (m *sipMsg) viaAddr() (netip.AddrPort, error) {
	v := m.header("Via")
	f := strings.Fields(v)
	if len(f) < 2 {
		return netip.AddrPort{}, fmt.Errorf("bad Via %q", v)
	}
	sentBy, _, _ := strings.Cut(f[1], ";")
	return netip.ParseAddrPort(sentBy)
}

// udpPeer is a SIP endpoint of one UDP socket inside a namespace.
type udpPeer struct {
	conn *net.UDPConn
	addr netip.AddrPort
}

// udpPeer opens a UDP socket at addr inside ns; it is closed in t.Cleanup.
func (tb *testbed) udpPeer(ns *netns, addr netip.AddrPort) *udpPeer {
	tb.t.Helper()
	c, err := ns.listenUDP(addr.String())
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Cleanup(func() { c.Close() })
	return &udpPeer{conn: c, addr: addr}
}

// send sends msg to dst or fails the test.
func (p *udpPeer) send(t testing.TB, dst netip.AddrPort, msg []byte) {
	t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(msg, dst); err != nil {
		t.Fatalf("send to %v: %v", dst, err)
	}
}

// recv returns the next SIP message for which want is true (nil: any), skipping others, or
// fails the test after timeout.
func (p *udpPeer) recv(t testing.TB, timeout time.Duration, what string, want func(*sipMsg) bool) *sipMsg {
	t.Helper()
	m, err := p.tryRecv(timeout, want)
	if err != nil {
		t.Fatalf("%v at %v: %s", err, p.addr, what)
	}
	return m
}

var errNothing = errors.New("no message")

// tryRecv is recv that returns errNothing after timeout instead of failing.
func (p *udpPeer) tryRecv(timeout time.Duration, want func(*sipMsg) bool) (*sipMsg, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65535)
	for {
		if err := p.conn.SetReadDeadline(deadline); err != nil {
			return nil, err
		}
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, errNothing
			}
			return nil, err
		}
		m, err := parseSIP(append([]byte(nil), buf[:n]...))
		if err != nil {
			return nil, fmt.Errorf("from %v: %w", from, err)
		}
		m.from = from
		if want == nil || want(m) {
			return m, nil
		}
	}
}

// isResponse matches responses to method with the given code (0: any final response).
func isResponse(method string, code int) func(*sipMsg) bool {
	return func(m *sipMsg) bool {
		s := m.status()
		return s != 0 && m.cseqMethod() == method && (s == code || (code == 0 && s >= 200))
	}
}

// isRequest matches requests of a method.
func isRequest(method string) func(*sipMsg) bool {
	return func(m *sipMsg) bool { return m.method() == method }
}

// streamPeer is a SIP endpoint of one TCP or TLS connection.
type streamPeer struct {
	conn net.Conn
	r    *bufio.Reader
}

func newStreamPeer(t testing.TB, c net.Conn) *streamPeer {
	t.Cleanup(func() { c.Close() })
	return &streamPeer{conn: c, r: bufio.NewReader(c)}
}

func (p *streamPeer) send(t testing.TB, msg []byte) {
	t.Helper()
	if _, err := p.conn.Write(msg); err != nil {
		t.Fatalf("send over %v: %v", p.conn.RemoteAddr(), err)
	}
}

// recv reads messages (framed by Content-Length) until want is true, or fails the test.
func (p *streamPeer) recv(t testing.TB, timeout time.Duration, what string, want func(*sipMsg) bool) *sipMsg {
	t.Helper()
	if err := p.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		t.Fatal(err)
	}
	for {
		var head bytes.Buffer
		length := 0
		for {
			line, err := p.r.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: read from %v: %v (read so far: %q)", what, p.conn.RemoteAddr(), err, head.String())
			}
			if head.Len() == 0 && strings.TrimSpace(line) == "" {
				continue // keep-alive CRLFs between messages
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
		if _, err := io.ReadFull(p.r, body); err != nil {
			t.Fatalf("%s: read body: %v", what, err)
		}
		m, err := parseSIP(append(head.Bytes(), body...))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if want == nil || want(m) {
			return m
		}
	}
}
