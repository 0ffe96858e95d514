package relay

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipcar/sipcar/mediarelay"
)

// streamLoopbed is a loopbed with a TCP listener (and a TLS one when tlsToo).
func streamLoopbed(t *testing.T, tlsToo bool, mutate func(*Config)) (*loopbed, netip.AddrPort, netip.AddrPort) {
	t.Helper()
	tcp := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freeUDPPort(t))
	var tlsAddr netip.AddrPort
	if tlsToo {
		tlsAddr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freeUDPPort(t))
	}
	b := newLoopbed(t, func(c *Config) {
		c.ListenTCP = tcp
		if tlsToo {
			c.ListenTLS = tlsAddr
			c.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
		}
		if mutate != nil {
			mutate(c)
		}
	})
	return b, tcp, tlsAddr
}

// dialFromPhone connects to dst from the phone's address (outside).
func dialFromPhone(t *testing.T, dst netip.AddrPort) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedBySipcar reports whether sipcar closed c within timeout (a read returns EOF or a reset).
func closedBySipcar(c net.Conn, timeout time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// Connections past the per-source cap are closed at once; another source still connects.
func TestConnectionCapPerSource(t *testing.T) {
	b, tcp, _ := streamLoopbed(t, false, func(c *Config) { c.MaxConnectionsPerSource = 3 })
	var conns []net.Conn
	for range 3 {
		conns = append(conns, dialFromPhone(t, tcp))
	}
	time.Sleep(100 * time.Millisecond) // the three are accepted and counted
	extra := dialFromPhone(t, tcp)
	if !closedBySipcar(extra, 2*time.Second) {
		t.Error("a fourth connection from one source stayed open")
	}
	for _, c := range conns {
		if closedBySipcar(c, 50*time.Millisecond) {
			t.Error("a connection within the cap was closed")
		}
	}
	if n := counted(t, b.r.metrics.connsRefused, "reason", "per-source"); n != 1 {
		t.Errorf("per-source refusals %v, want 1", n)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 4)}}
	other, err := d.Dial("tcp", tcp.String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if closedBySipcar(other, 300*time.Millisecond) {
		t.Error("another source's connection was closed")
	}
	conns[0].Close()
	eventuallyOK(t, func() bool {
		c := dialFromPhone(t, tcp)
		return !closedBySipcar(c, 200*time.Millisecond)
	}, "a connection after one closed")
}

// eventuallyOK retries cond for ten seconds (what the relay does in goroutines of its own, on a
// loaded machine).
func eventuallyOK(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s: not seen", what)
}

// A peer that trickles a message is cut off when the message's time is up, however often a byte
// arrives; a TLS connection that never says hello is closed at the handshake's time.
func TestSlowPeersCutOff(t *testing.T) {
	b, tcp, tlsAddr := streamLoopbed(t, true, func(c *Config) {
		c.MessageTimeout = 600 * time.Millisecond
		c.TLSHandshakeTimeout = 600 * time.Millisecond
	})
	slow := dialFromPhone(t, tcp)
	halfOpen := dialFromPhone(t, tlsAddr)
	done := make(chan bool, 1)
	go func() {
		msg := "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.3;branch=z9hG4bKslow\r\n"
		for i := range len(msg) {
			if _, err := slow.Write([]byte{msg[i]}); err != nil {
				done <- true // sipcar closed it
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		done <- false
	}()
	select {
	case cut := <-done:
		if !cut {
			t.Error("a message trickled for longer than the message timeout was not cut off")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the trickle neither finished nor was cut")
	}
	if !closedBySipcar(halfOpen, 3*time.Second) {
		t.Error("a TLS connection without a handshake stayed open")
	}
	eventuallyOK(t, func() bool {
		return counted(t, b.r.metrics.connsClosed, "reason", "message-timeout") == 1 &&
			counted(t, b.r.metrics.connsClosed, "reason", "handshake-timeout") == 1
	}, "message-timeout and handshake-timeout counted once each")
}

// A Content-Length that frames nothing is answered 400 before the connection closes.
func TestBadContentLengthOnTCP(t *testing.T) {
	_, tcp, _ := streamLoopbed(t, false, nil)
	c := dialFromPhone(t, tcp)
	fmt.Fprintf(c, "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bKcl\r\nFrom: <sip:a@b>;tag=1\r\n"+
		"To: <sip:b@c>\r\nCall-ID: cl\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: ten\r\n\r\n", c.LocalAddr())
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	res, err := sip.ParseMessage(readStreamMessage(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := res.(*sip.Response); !ok || r.StatusCode != 400 || r.CallID().Value() != "cl" {
		t.Errorf("got %q, want 400 for call cl", res.String())
	}
	if !closedBySipcar(c, 2*time.Second) {
		t.Error("the connection stayed open after a broken Content-Length")
	}
}

// readStreamMessage reads one message framed by its Content-Length from a stream.
func readStreamMessage(t *testing.T, c net.Conn) []byte {
	t.Helper()
	br := bufio.NewReader(c)
	var head strings.Builder
	length := 0
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a response: %v (so far %q)", err, head.String())
		}
		head.WriteString(line)
		if n, ok := strings.CutPrefix(strings.ToLower(line), "content-length:"); ok {
			fmt.Sscan(strings.TrimSpace(n), &length)
		}
		if line == "\r\n" {
			break
		}
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	return append([]byte(head.String()), body...)
}

// The TLS listener takes no CBC suite for TLS 1.2; an AEAD one works.
func TestTLSOffersAEADOnly(t *testing.T) {
	_, _, tlsAddr := streamLoopbed(t, true, nil)
	dial := func(suites []uint16) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", tlsAddr.String(), &tls.Config{
			InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: suites})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial([]uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}); err == nil {
		t.Error("a client offering only CBC with SHA-1 got a TLS 1.2 session")
	}
	if err := dial([]uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}); err != nil {
		t.Errorf("an AEAD client: %v", err)
	}
}

// Connections use only the descriptors the ports' sockets leave: with room for two, a third is
// refused (and counted) while UDP goes on.
func TestConnectionsLeaveDescriptors(t *testing.T) {
	b, tcp, _ := streamLoopbed(t, false, func(c *Config) {
		c.Media.Mode = mediarelay.ModeFallback
		c.DescriptorLimit = descriptorMargin + 2 // no port in use yet: room for two connections
	})
	first, second := dialFromPhone(t, tcp), dialFromPhone(t, tcp)
	time.Sleep(100 * time.Millisecond)
	third := dialFromPhone(t, tcp)
	if !closedBySipcar(third, 2*time.Second) {
		t.Error("a connection past the descriptors' room stayed open")
	}
	for _, c := range []net.Conn{first, second} {
		if closedBySipcar(c, 50*time.Millisecond) {
			t.Error("a connection within the room was closed")
		}
	}
	if n := counted(t, b.r.metrics.connsRefused, "reason", "descriptors"); n != 1 {
		t.Errorf("descriptors refusals %v, want 1", n)
	}
}

// A next hop that accepts a connection and never answers its TLS handshake holds up nobody:
// while sipcar waits for it, a message from the PBX to a phone over UDP goes through at once,
// and the caller gets its 503 when the handshake's time is up.
func TestDeadNextHopStallsNothing(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	go func() {
		for {
			c, err := dead.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never read: the handshake hangs
		}
	}()
	b := newLoopbed(t, func(c *Config) {
		c.Upstream = dead.Addr().(*net.TCPAddr).AddrPort()
		c.UpstreamTransport = "tls"
		c.TLSHandshakeTimeout = 2 * time.Second
	})
	phone := addrOf(b.phone)
	b.send(b.phone, b.sip, fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKdead\n"+
		"From: <sip:200@127.0.0.1>;tag=d\nTo: <sip:100@127.0.0.1>\nCall-ID: dead\nCSeq: 1 INVITE\nMax-Forwards: 70\nContent-Length: 0\n\n",
		b.sip.Port(), phone))
	time.Sleep(100 * time.Millisecond) // the INVITE is on its way to the dead next hop
	b.send(b.pbx, b.sip, fmt.Sprintf("OPTIONS sip:200@%s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKlive\n"+
		"From: <sip:100@127.0.0.1>;tag=l\nTo: <sip:200@127.0.0.1>\nCall-ID: live\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
		phone, addrOf(b.pbx)))
	first, _ := b.recv(b.phone)
	if req, ok := first.(*sip.Request); !ok || req.CallID().Value() != "live" {
		t.Fatalf("the phone's first message is %q; want the PBX's OPTIONS before the INVITE's 503 (the dial must not stall the reader)", first.String())
	}
	_ = b.phone.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _, err := b.phone.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no answer to the INVITE: %v", err)
	}
	if m, err := sip.ParseMessage(buf[:n]); err != nil || m.(*sip.Response).StatusCode != 503 || m.(*sip.Response).CallID().Value() != "dead" {
		t.Errorf("the INVITE to the dead next hop got %q; want 503", buf[:n])
	}
}
