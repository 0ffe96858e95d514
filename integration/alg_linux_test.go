package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestALGComparison runs the same calls through the same NAT gateway twice: once with sipcar in
// transparent mode, once with the kernel's own SIP ALG (nf_conntrack_sip, nf_nat_sip) and
// masquerade, the reference sipcar is to beat. Each call is a phone inside calling the server
// directly; both ends send their own media (100 RTP packets each) to the address the other's SDP
// gave, so media arriving proves the SDP was translated, not only that replies find their way
// back. For each it records: the call set up (the phone got the 200 and the server the ACK),
// media both ways (at least half the packets arrived at each end), and which fields carried an
// inside address to the internet side. It prints the comparison as a table. sipcar's rows are
// asserted (set up, media both ways, no inside address where an address is given); the
// kernel's are the reference, reported only.
func TestALGComparison(t *testing.T) {
	t.Parallel()
	cases := []algCase{
		{slug: "udp", name: "UDP", transport: "udp"},
		{slug: "tcp", name: "TCP", transport: "tcp"},
		{slug: "tls", name: "TLS", transport: "tls"},
		{slug: "udp-via-port", name: "UDP, source port 5070, Via and Contact say 5060", transport: "udp", viaPort: true},
	}
	gateways := []string{"sipcar", "kernel"}
	rows := make([]algRow, len(gateways)*len(cases))
	t.Run("calls", func(t *testing.T) {
		for gi, g := range gateways {
			for ci, c := range cases {
				row := &rows[gi*len(cases)+ci]
				row.gateway, row.call = g, c.name
				t.Run(g+"/"+c.slug, func(t *testing.T) {
					t.Parallel()
					if c.transport == "tls" {
						runALGCallTLS(t, g, row)
					} else {
						runALGCallSipp(t, g, c, row)
					}
					row.done = true
					t.Logf("%s, %s: %s", g, c.name, row)
					if g == "sipcar" {
						row.assert(t)
					}
				})
			}
		}
	})
	t.Logf("SIP ALG comparison (sipcar transparent vs the kernel's nf_nat_sip with masquerade):\n%s", algTable(rows, "RTP at phone / at server"))
}

// algCase is one call of the comparison.
type algCase struct {
	slug, name string
	transport  string
	// viaPort: the phone sends from port 5070 and writes 5060 in its Via and Contact, as a phone
	// behind a NAT of its own does.
	viaPort bool
}

// algRow is what one call through one gateway showed.
type algRow struct {
	gateway, call string
	done          bool // the call ran to the end of its checks
	setUp         bool
	toPhone       int // RTP packets that reached the phone's media port
	toServer      int // and the server's
	sent          int // RTP packets each end sent
	addrLeaks     []string
	otherLeaks    []string
	notes         []string
}

func (r *algRow) mediaBothWays() bool {
	return r.toPhone >= r.sent/2 && r.toServer >= r.sent/2 && r.sent > 0
}

func (r *algRow) String() string {
	return fmt.Sprintf("set up %v, RTP %d/%d to the phone, %d/%d to the server, inside addresses in %v (address fields) and %v (others); %s",
		r.setUp, r.toPhone, r.sent, r.toServer, r.sent, r.addrLeaks, r.otherLeaks, strings.Join(r.notes, "; "))
}

// assert fails the test unless the call set up, carried media both ways and gave no inside
// address to the internet side.
func (r *algRow) assert(t *testing.T) {
	t.Helper()
	if !r.setUp {
		t.Errorf("%s, %s: the call did not set up", r.gateway, r.call)
	}
	if !r.mediaBothWays() {
		t.Errorf("%s, %s: media %d/%d packets to the phone, %d/%d to the server; want at least half both ways",
			r.gateway, r.call, r.toPhone, r.sent, r.toServer, r.sent)
	}
	if len(r.addrLeaks) > 0 {
		t.Errorf("%s, %s: inside addresses reached the internet side in %v", r.gateway, r.call, r.addrLeaks)
	}
}

// algColumn is a column a comparison adds after "call": its heading and the cell of row i.
type algColumn struct {
	head string
	cell func(i int) string
}

// algTable writes the rows as a Markdown table; media says where the RTP was counted, and extra
// columns follow the call's.
func algTable(rows []algRow, media string, extra ...algColumn) string {
	list := func(fs []string) string {
		if len(fs) == 0 {
			return "none"
		}
		return strings.Join(fs, ", ")
	}
	var b strings.Builder
	b.WriteString("| gateway | call |")
	for _, c := range extra {
		b.WriteString(" " + c.head + " |")
	}
	b.WriteString(" set up | media both ways (" + media + ") | inside address in address fields | inside address in identities | notes |\n|")
	for range 7 + len(extra) {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for i, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |", r.gateway, r.call)
		if !r.done {
			b.WriteString(strings.Repeat(" - |", 4+len(extra)) + " test stopped before the call was measured (see its log) |\n")
			continue
		}
		for _, c := range extra {
			b.WriteString(" " + c.cell(i) + " |")
		}
		fmt.Fprintf(&b, " %s | %s (%d/%d, %d/%d) | %s | %s | %s |\n", yesNo(r.setUp),
			yesNo(r.mediaBothWays()), r.toPhone, r.sent, r.toServer, r.sent, list(r.addrLeaks), list(r.otherLeaks), strings.Join(r.notes, "; "))
	}
	return b.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// interceptTLSPort is where sipcar listens for intercepted SIP over TLS.
const interceptTLSPort = 15061

// recordLeaks notes the fields of msgs that carry an inside address.
func (r *algRow) recordLeaks(msgs [][]byte) {
	for _, m := range msgs {
		for _, f := range leakedFields(m, gwInsideText) {
			if isAddressField(f) {
				if !slices.Contains(r.addrLeaks, f) {
					r.addrLeaks = append(r.addrLeaks, f)
				}
			} else if !slices.Contains(r.otherLeaks, f) {
				r.otherLeaks = append(r.otherLeaks, f)
			}
		}
	}
}

// recordIPLeaks notes packets with an inside address in their IP header on the public side.
func (r *algRow) recordIPLeaks(pkts []packet) {
	for _, p := range pkts {
		if insideNet.Contains(p.src.Addr()) || insideNet.Contains(p.dst.Addr()) {
			r.addrLeaks = append(r.addrLeaks, "IP header")
			return
		}
	}
}

// runALGCallSipp runs a sipp call (UDP or TCP) through the gateway.
func runALGCallSipp(t *testing.T, gateway string, c algCase, row *algRow) {
	l, startGateway := gatewayFor(t, newTestbed(t), gateway, nil)
	tcp := c.transport == "tcp"
	lan := l.capture(l.gw, "lan0", netip.AddrPortFrom(gwPhoneAddr, 9))
	wan := l.capture(l.gw, "wan0", netip.AddrPortFrom(gwServerAddr, 9))
	srv := l.sipp(l.srv, "server", sippOpts{scenario: "uas_play.xml", local: gwServerAddr.String(), tcp: tcp, rtpPcap: true})
	l.waitListening(l.srv, c.transport, 5060)
	startGateway()
	opts := sippOpts{scenario: "uac_media.xml", local: gwPhoneAddr.String(), remote: netip.AddrPortFrom(gwServerAddr, 5060).String(),
		tcp: tcp, pauseMS: 3000, rtpPcap: true, extra: []string{"-recv_timeout", "8000"}}
	phoneSIP := netip.AddrPortFrom(gwPhoneAddr, 5060)
	if c.viaPort {
		opts.scenario, opts.port = "uac_viaport.xml", 5070
		phoneSIP = netip.AddrPortFrom(gwPhoneAddr, 5070)
	}
	phone := l.sipp(l.phone, "phone", opts)
	if _, err := phone.wait(40 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.wait(5 * time.Second); err != nil {
		srv.stop(syscall.SIGTERM)
	}
	if st, err := phone.stats(); err == nil && st.successful == 1 {
		row.notes = append(row.notes, "sipp completed the call")
	} else {
		row.notes = append(row.notes, "sipp failed the call")
	}

	lanPkts, wanPkts := lan.stop(t), wan.stop(t)
	gotOK, gotACK := false, false
	for _, w := range wireMessages(lanPkts) {
		if w.status() == 200 && w.cseqMethod() == "INVITE" && w.dst.Addr() == gwPhoneAddr && (tcp || w.dst == phoneSIP) {
			gotOK = true
		}
	}
	var public [][]byte
	var invite []byte
	for _, w := range wireMessages(wanPkts) {
		public = append(public, w.raw)
		if strings.HasPrefix(string(w.raw), "ACK ") && w.dst == netip.AddrPortFrom(gwServerAddr, 5060) {
			gotACK = true
		}
		if strings.HasPrefix(string(w.raw), "INVITE ") && invite == nil {
			invite = w.raw
		}
	}
	row.setUp = gotOK && gotACK
	row.sent = 100
	row.toPhone = rtpTo(lanPkts, netip.AddrPortFrom(gwPhoneAddr, 6000))
	row.toServer = rtpTo(wanPkts, netip.AddrPortFrom(gwServerAddr, 6000))
	row.recordLeaks(public)
	row.recordIPLeaks(wanPkts)
	if invite != nil {
		if m, err := parseSIP(invite); err == nil {
			if a, err := m.media(); err == nil {
				if a.Port() == 6000 {
					row.notes = append(row.notes, "m= port kept (6000)")
				} else {
					row.notes = append(row.notes, "m= port translated")
				}
			}
		}
	} else {
		row.notes = append(row.notes, "no INVITE left the gateway")
	}
}

// runALGCallTLS runs a call over TLS (Go peers: Debian's sipp has no TLS) through the gateway.
// The kernel's ALG cannot read TLS: the phone's SIP goes through untranslated, which the server
// sees once it decrypts it. sipcar terminates TLS: the gateway steers TLS to port 5061 to its
// TLS listener, the phone trusts sipcar's certificate (a managed phone trusting its gateway's
// CA), and sipcar reaches the server over TLS, trusting the server's certificate. The fields are
// listed as the server received them.
func runALGCallTLS(t *testing.T, gateway string, row *algRow) {
	tb := newTestbed(t)
	srvCert, srvKey, srvRoots := writeCertificate(t, tb.workdir("tls-server"), gwServerAddr)
	phoneRoots := srvRoots
	var tlsEnv []string
	if gateway == "sipcar" {
		var carCert, carKey string
		carCert, carKey, phoneRoots = writeCertificate(t, tb.workdir("tls-sipcar"), gwServerAddr)
		tlsEnv = []string{fmt.Sprintf("SIPCAR_LISTEN_TLS=:%d", interceptTLSPort), "SIPCAR_TLS_CERT=" + carCert,
			"SIPCAR_TLS_KEY=" + carKey, "SIPCAR_TLS_CA=" + srvCert}
	}
	l, startGateway := gatewayFor(t, tb, gateway, tlsEnv)
	wan := l.capture(l.gw, "wan0", netip.AddrPortFrom(gwServerAddr, 9))
	cert, err := tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := l.srv.listenTCP(netip.AddrPortFrom(gwServerAddr, 5061).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			close(accepted)
			return
		}
		_ = tc.SetDeadline(time.Time{})
		accepted <- tc
	}()
	startGateway()
	row.sent = 50

	phoneConn, err := dialTLS(l.phone, netip.AddrPortFrom(gwServerAddr, 5061), phoneRoots)
	if err != nil {
		row.notes = append(row.notes, "phone's TLS connection failed: "+err.Error())
		row.recordIPLeaks(wan.stop(t))
		return
	}
	phone := newStreamPeer(t, phoneConn)
	phoneMedia := l.udpPeer(l.phone, netip.AddrPortFrom(gwPhoneAddr, 7000))
	srvMedia := l.udpPeer(l.srv, netip.AddrPortFrom(gwServerAddr, 7000))

	local := netip.MustParseAddrPort(phoneConn.LocalAddr().String())
	via := fmt.Sprintf("Via: SIP/2.0/TLS %v;branch=", local)
	contact := fmt.Sprintf("Contact: <sip:phone@%v;transport=tls>", local)
	dialog := []string{"From: <sip:phone@198.18.0.2>;tag=algtls", "Call-ID: alg-tls@198.18.0.2"}
	phone.send(t, buildSIP("INVITE sip:srv@198.51.100.10:5061;transport=tls SIP/2.0", append([]string{
		via + "z9hG4bKalgtls1", "To: <sip:srv@198.51.100.10>", "CSeq: 1 INVITE", contact, "Max-Forwards: 70",
		"Content-Type: application/sdp"}, dialog...), offer(phoneMedia.addr)))
	// A relay connects to the server when it has something to send: the INVITE.
	var srvConn net.Conn
	select {
	case c, ok := <-accepted:
		if !ok {
			t.Fatal("the server's TLS handshake failed")
		}
		srvConn = c
	case <-time.After(10 * time.Second):
		t.Fatal("the server accepted no TLS connection within 10 s of the INVITE")
	}
	server := newStreamPeer(t, srvConn)
	invite := server.recv(t, 10*time.Second, "the INVITE over TLS at the server", isRequest("INVITE"))
	received := [][]byte{invite.raw}
	offered, err := invite.media()
	if err != nil {
		t.Fatal(err)
	}
	server.send(t, response(invite, 200, "OK", "srv", []string{"Contact: <sip:srv@198.51.100.10:5061;transport=tls>",
		"Content-Type: application/sdp"}, offer(srvMedia.addr)))
	ok := phone.recv(t, 10*time.Second, "the 200 OK over TLS at the phone", isResponse("INVITE", 0))
	if ok.status() != 200 {
		row.notes = append(row.notes, "the phone got "+ok.start)
		row.recordLeaks(received)
		return
	}
	answered, err := ok.media()
	if err != nil {
		t.Fatal(err)
	}
	inDialog := func(method string, cseq int) []byte {
		return buildSIP(method+" "+ok.contactURI()+" SIP/2.0", append([]string{
			via + fmt.Sprintf("z9hG4bKalgtls%d", cseq+1), "To: " + ok.header("To"), fmt.Sprintf("CSeq: %d %s", cseq, method),
			contact, "Max-Forwards: 70"}, dialog...), "")
	}
	phone.send(t, inDialog("ACK", 1))
	ack := server.recv(t, 10*time.Second, "the ACK over TLS at the server", isRequest("ACK"))
	received = append(received, ack.raw)
	row.setUp = true

	row.toServer, row.toPhone = flowRTP(phoneMedia, answered, srvMedia, offered, row.sent)

	phone.send(t, inDialog("BYE", 2))
	bye := server.recv(t, 10*time.Second, "the BYE over TLS at the server", isRequest("BYE"))
	received = append(received, bye.raw)
	server.send(t, response(bye, 200, "OK", "srv", nil, ""))
	phone.recv(t, 10*time.Second, "the 200 OK to the BYE at the phone", isResponse("BYE", 200))
	row.recordLeaks(received)

	wanPkts := wan.stop(t)
	row.recordIPLeaks(wanPkts)
	if len(wireMessages(wanPkts)) == 0 {
		row.notes = append(row.notes, "the public side saw only ciphertext; fields as the server decrypted them")
	}
	if gateway == "kernel" {
		row.notes = append(row.notes, "the ALG cannot read TLS: the SIP passed untranslated")
	}
}

// gatewayFor builds the gateway topology on tb and sets the gateway up: sipcar's interception
// (SIP over UDP and TCP to port 5060, TLS to 5061) or the kernel's SIP ALG. The function it
// returns starts sipcar (transparent, with extra environment), or does nothing for the kernel.
func gatewayFor(t *testing.T, tb *testbed, gateway string, extra []string) (*gatewayLab, func()) {
	t.Helper()
	l := newGatewayLab(tb)
	switch gateway {
	case "sipcar":
		l.interceptSIP()
		l.nft(l.gw, fmt.Sprintf("add rule ip sctproxy pre iifname \"lan0\" tcp dport 5061 tproxy to :%d meta mark set 0x1 accept\n", interceptTLSPort))
		return l, func() { l.startSipcar(l.gw, l.sipcarEnv(extra...)...) }
	case "kernel":
		l.kernelALG()
		return l, func() {}
	}
	t.Fatalf("unknown gateway %q", gateway)
	return nil, nil
}

// listenTCP opens a TCP listener at addr inside the namespace.
func (n *netns) listenTCP(addr string) (net.Listener, error) {
	var l net.Listener
	err := n.do(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// dialTLS connects from inside ns to dst over TLS, verifying dst's certificate against roots.
func dialTLS(ns *netns, dst netip.AddrPort, roots *x509.CertPool) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := ns.dialContext(ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: dst.Addr().String(), MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return tc, nil
}

// flowRTP sends n RTP packets from a to dstA and from b to dstB at once, 20 ms apart, and
// counts the RTP that reaches b and a (from anywhere). Send errors (no route to an inside
// address the SDP named) count as packets lost.
func flowRTP(a *udpPeer, dstA netip.AddrPort, b *udpPeer, dstB netip.AddrPort, n int) (atB, atA int) {
	count := func(p *udpPeer, out *int, wg *sync.WaitGroup) {
		defer wg.Done()
		buf := make([]byte, 2048)
		_ = p.conn.SetReadDeadline(time.Now().Add(time.Duration(n)*20*time.Millisecond + time.Second))
		for {
			m, _, err := p.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return
				}
				continue // ICMP errors from the sends
			}
			if isRTP(buf[:m]) {
				*out++
			}
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go count(a, &atA, &wg)
	go count(b, &atB, &wg)
	pkt := make([]byte, 12+160)
	pkt[0], pkt[1] = 0x80, 8
	for i := range n {
		binary.BigEndian.PutUint16(pkt[2:], uint16(i))
		binary.BigEndian.PutUint32(pkt[4:], uint32(i*160))
		binary.BigEndian.PutUint32(pkt[8:], 0xa1)
		_, _ = a.conn.WriteToUDPAddrPort(pkt, dstA)
		binary.BigEndian.PutUint32(pkt[8:], 0xb2)
		_, _ = b.conn.WriteToUDPAddrPort(pkt, dstB)
		time.Sleep(20 * time.Millisecond) // the pace of real RTP, not a synchronisation
	}
	wg.Wait()
	return atB, atA
}
