package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTLSPhoneUDPPBX is transport conversion: a phone calls over TLS (a Go TLS client, since
// Debian's sipp has no TLS) to sipcar's TLS listener, and sipcar reaches the PBX (sipp UAS)
// over UDP. The phone must be told to keep using TLS (the Contact it gets says transport=tls
// or sips:), media flows both ways, and BYE over the same connection ends the call.
func TestTLSPhoneUDPPBX(t *testing.T) {
	t.Parallel()
	l := newUpstreamLab(newTestbed(t))
	certFile, keyFile, roots := writeCertificate(t, l.workdir("tls"), publicAddr)
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp",
		"SIPCAR_LISTEN_TLS=:5061", "SIPCAR_TLS_CERT="+certFile, "SIPCAR_TLS_KEY="+keyFile)...)

	phone, local := dialTLSPhone(t, l, roots)
	media := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 7000))

	via := fmt.Sprintf("Via: SIP/2.0/TLS %v;branch=", local)
	contact := fmt.Sprintf("Contact: <sip:phone@%v;transport=tls>", local)
	phone.send(t, buildSIP("INVITE sip:pbx@198.51.100.1:5061;transport=tls SIP/2.0", []string{
		via + "z9hG4bKtls1", "From: <sip:phone@198.51.100.1>;tag=tls1", "To: <sip:pbx@198.51.100.1>",
		"Call-ID: over-tls", "CSeq: 1 INVITE", contact, "Max-Forwards: 70", "Content-Type: application/sdp",
	}, offer(media.addr)))
	ok := phone.recv(t, 10*time.Second, "the final answer to the INVITE over TLS", isResponse("INVITE", 0))
	if ok.status() != 200 {
		t.Fatalf("INVITE over TLS answered %q; want 200", ok.start)
	}
	answer, err := ok.media()
	if err != nil {
		t.Fatal(err)
	}
	if answer.Addr() != publicAddr {
		t.Errorf("the answer's media is at %v; want sipcar's public address", answer)
	}
	target := ok.contactURI()
	t.Logf("200 OK over TLS: Contact %s, media %v", ok.header("Contact"), answer)
	if !strings.HasPrefix(target, "sips:") && !strings.Contains(strings.ToLower(target), "transport=tls") {
		t.Errorf("the Contact the TLS phone got, %q, does not keep it on TLS (want sips: or ;transport=tls)", target)
	}
	if dst, err := uriAddr(target); err != nil || dst.Addr() != publicAddr {
		t.Errorf("the Contact the TLS phone got, %q, is not sipcar's public address", target)
	}
	inDialog := func(method string, cseq int, branch string) []byte {
		return buildSIP(method+" "+target+" SIP/2.0", []string{
			via + branch, "From: <sip:phone@198.51.100.1>;tag=tls1", "To: " + ok.header("To"),
			"Call-ID: over-tls", fmt.Sprintf("CSeq: %d %s", cseq, method), contact, "Max-Forwards: 70",
		}, "")
	}
	phone.send(t, inDialog("ACK", 1, "z9hG4bKtls2"))

	// RTP both ways: the PBX echoes what the phone sends through sipcar.
	echoed := exchangeRTP(t, media, answer, 50)
	if echoed == 0 {
		t.Errorf("none of 50 RTP packets sent to %v came back: no media both ways", answer)
	}

	phone.send(t, inDialog("BYE", 2, "z9hG4bKtls3"))
	phone.recv(t, 10*time.Second, "the 200 OK for the BYE over TLS", isResponse("BYE", 200))
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")
}

// exchangeRTP sends n RTP packets, 20 ms apart, from peer to dst and counts those that come
// back from dst.
func exchangeRTP(t *testing.T, peer *udpPeer, dst netip.AddrPort, n int) int {
	t.Helper()
	got := make(chan int, 1)
	go func() {
		buf := make([]byte, 2048)
		count := 0
		_ = peer.conn.SetReadDeadline(time.Now().Add(time.Duration(n)*20*time.Millisecond + 2*time.Second))
		for {
			m, from, err := peer.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				got <- count
				return
			}
			if from == dst && isRTP(buf[:m]) {
				count++
			}
		}
	}()
	pkt := make([]byte, 12+160)
	pkt[0], pkt[1] = 0x80, 8
	binary.BigEndian.PutUint32(pkt[8:], 0x7e57)
	for i := range n {
		binary.BigEndian.PutUint16(pkt[2:], uint16(i))
		binary.BigEndian.PutUint32(pkt[4:], uint32(i*160))
		peer.send(t, dst, pkt)
		time.Sleep(20 * time.Millisecond) // the pace of real RTP, not a synchronisation
	}
	return <-got
}

// writeCertificate makes a self-signed certificate for ip, writes it and its key as PEM into
// dir, and returns their paths and a pool that trusts it.
func writeCertificate(t *testing.T, dir string, ip netip.Addr) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sipcar integration test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{ip.AsSlice()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := writeFileMode(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// dialTLSPhone opens a Go phone's TLS connection from the phone namespace to sipcar's TLS
// listener (5061 at its public address), verified against roots, and returns it with the
// connection's local address.
func dialTLSPhone(t *testing.T, l *upstreamLab, roots *x509.CertPool) (*streamPeer, netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := l.phone.dialContext(ctx, "tcp", netip.AddrPortFrom(publicAddr, 5061).String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: publicAddr.String(), MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		t.Fatalf("TLS handshake with sipcar: %v", err)
	}
	return newStreamPeer(t, tc), netip.MustParseAddrPort(tc.LocalAddr().String())
}
