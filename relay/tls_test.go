package relay

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sipcar.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A phone on TLS, a PBX on UDP: sipcar terminates TLS, converts the transport (Via protocol,
// Contact transport), and a request from the PBX to the phone goes back over the phone's own
// TLS connection.
func TestTLSPhoneUDPPBX(t *testing.T) {
	tlsPort := freeUDPPort(t) // a free number; TCP and UDP port spaces differ but this is loopback
	b := newLoopbed(t, func(c *Config) {
		c.ListenTLS = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), tlsPort)
		c.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{selfSigned(t)}}
	})
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}} // the phone's address, outside
	conn, err := tls.DialWithDialer(d, "tcp", fmt.Sprintf("127.0.0.1:%d", tlsPort), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if v := conn.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Errorf("TLS version %x", v)
	}
	me := conn.LocalAddr().String()
	reg := fmt.Sprintf("REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS %s;branch=z9hG4bKt1;rport\r\n"+
		"From: <sips:300@127.0.0.1>;tag=t1\r\nTo: <sips:300@127.0.0.1>\r\nCall-ID: tlsreg\r\nCSeq: 1 REGISTER\r\n"+
		"Max-Forwards: 70\r\nContact: <sips:300@%s>;expires=600\r\nContent-Length: 0\r\n\r\n", me, me)
	if _, err := conn.Write([]byte(reg)); err != nil {
		t.Fatal(err)
	}
	m, src := b.recv(b.pbx)
	req := m.(*sip.Request)
	if via := req.Via(); via.Transport != "UDP" {
		t.Errorf("PBX sees Via transport %s, want UDP", via.Transport)
	}
	contact := req.Contact()
	if contact == nil || contact.Address.Scheme != "sip" || contact.Address.Host != "127.0.0.1" {
		t.Fatalf("PBX sees Contact %v, want a sip: binding of sipcar", contact)
	}
	if tr, _ := contact.Address.UriParams.Get("transport"); strings.ToLower(tr) != "udp" {
		t.Errorf("PBX sees Contact transport %q, want udp", tr)
	}
	b.send(b.pbx, src, fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sips:300@127.0.0.1>;tag=t1\nTo: <sips:300@127.0.0.1>;tag=r\n"+
		"Call-ID: tlsreg\nCSeq: 1 REGISTER\nContact: %s;expires=600\nContent-Length: 0\n\n", req.Via().Value(), contact.Value()))

	rd := bufio.NewReader(conn)
	read := func() sip.Message {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		var raw []byte
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("read over TLS: %v (so far %q)", err, raw)
			}
			raw = append(raw, line...)
			if line == "\r\n" {
				break
			}
		}
		msg, err := sip.ParseMessage(raw)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		return msg
	}
	res := read().(*sip.Response)
	if res.StatusCode != 200 || res.Via().Transport != "TLS" {
		t.Fatalf("phone got %d with Via transport %s, want 200 over TLS", res.StatusCode, res.Via().Transport)
	}

	// The PBX calls the registered contact: sipcar's binding, which forwards over the phone's
	// own connection.
	contactAddr := netip.AddrPortFrom(netip.MustParseAddr(contact.Address.Host), uint16(contact.Address.Port))
	b.send(b.pbx, contactAddr, fmt.Sprintf("OPTIONS sip:300@%s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKo1\n"+
		"From: <sip:100@127.0.0.2>;tag=o1\nTo: <sips:300@127.0.0.1>\nCall-ID: opt1\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
		contactAddr, addrOf(b.pbx)))
	opt := read().(*sip.Request)
	// The Request-URI is the phone's own contact again; the Via is the PBX's public binding, on TLS.
	if tr, _ := opt.Recipient.UriParams.Get("transport"); opt.Method != sip.OPTIONS || opt.Recipient.Host != "127.0.0.3" ||
		strings.ToLower(tr) != "tls" || opt.Via().Transport != "TLS" || opt.Via().Host != "127.0.0.1" {
		t.Errorf("phone got %s %s with Via %s", opt.Method, opt.Recipient.String(), opt.Via().Value())
	}
}

// A PBX on TLS, given by its address: sipcar opens TLS to it, verifies its certificate against
// the configured CA by that address, and the phone on UDP gets its answer.
func TestTLSUpstreamByAddress(t *testing.T) {
	cert := selfSigned(t)
	l, err := tls.Listen("tcp", "127.0.0.2:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	b := newLoopbed(t, func(c *Config) {
		c.Upstream = l.Addr().(*net.TCPAddr).AddrPort()
		c.UpstreamTransport = "tls"
		c.ClientTLS = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	})
	got := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		rd := bufio.NewReader(c)
		var raw []byte
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				got <- err.Error()
				return
			}
			raw = append(raw, line...)
			if line == "\r\n" {
				break
			}
		}
		m, err := sip.ParseMessage(raw)
		if err != nil {
			got <- err.Error()
			return
		}
		req := m.(*sip.Request)
		got <- req.Via().Transport
		res := sip.NewResponseFromRequest(req, 200, "OK", nil)
		c.Write([]byte(res.String()))
		time.Sleep(200 * time.Millisecond)
	}()
	b.send(b.phone, b.sip, fmt.Sprintf("OPTIONS sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKtu\n"+
		"From: <sip:200@127.0.0.1>;tag=tu\nTo: <sip:100@127.0.0.1>\nCall-ID: tlsup\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
		b.sip.Port(), addrOf(b.phone)))
	select {
	case v := <-got:
		if v != "TLS" {
			t.Fatalf("PBX got %q, want a request whose Via says TLS", v)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("nothing reached the TLS PBX")
	}
	if m, _ := b.recv(b.phone); m.(*sip.Response).StatusCode != 200 {
		t.Errorf("phone got %v", m)
	}
}
