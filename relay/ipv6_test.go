package relay

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
)

// A dual-stack sipcar between an IPv6 phone (::1, outside) and an IPv4 PBX (127.0.0.2, inside):
// each peer is handed addresses of its own family only (Via, Contact, SDP c= and o=), and media
// crosses from one family to the other. The host has one IPv6 loopback address, which the phone
// takes: sipcar's public IPv6 address is 2001:db8:b::1 behind a 1:1 NAT that delivers to ::1
// (SIPCAR_PUBLIC_BIND_ADDR), and the phone sends to ::1 what it is told to send there.
func TestIPv6PhoneIPv4PBX(t *testing.T) {
	lo4, lo6, pub6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("2001:db8:b::1")
	pbx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer pbx.Close()
	phone, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	defer phone.Close()
	port := freeUDPPort(t)
	reg := prometheus.NewRegistry()
	b := newLoopbed(t, func(c *Config) {
		c.Registerer = reg
		c.Upstream = addrOf(pbx)
		c.ListenUDP = netip.AddrPortFrom(netip.IPv6Unspecified(), port) // both families
		c.Map.Public = pinhole.Addrs{IPv4: lo4, IPv6: pub6}
		c.Map.Inside = pinhole.Addrs{IPv4: lo4}
		c.PublicBind = map[netip.Addr]netip.Addr{pub6: lo6}
		c.Media = mediarelay.Config{Mode: mediarelay.ModeFallback}
	})
	b.pbx, b.phone = pbx, phone
	sipcar6 := netip.AddrPortFrom(lo6, port)
	phoneRTP, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer phoneRTP.Close()
	pbxRTP := listenRTP(t, "127.0.0.2")
	me := addrOf(phone)
	sdp6 := fmt.Sprintf("v=0\no=- 1 1 IN IP6 ::1\ns=-\nc=IN IP6 ::1\nt=0 0\nm=audio %d RTP/AVP 0\n", addrOf(phoneRTP).Port())
	b.send(phone, sipcar6, withBody(fmt.Sprintf("INVITE sip:100@[2001:db8:b::1]:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK6\n"+
		"From: <sip:200@[2001:db8:b::1]>;tag=six\nTo: <sip:100@[2001:db8:b::1]>\nCall-ID: six\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\n", port, me, me), sdp6))

	m, src := b.recv(pbx)
	// Every address the PBX may use is IPv4 (From and To are identities, left as written).
	for _, l := range strings.Split(m.String(), "\r\n") {
		if (strings.Contains(l, "[") || strings.Contains(l, "IP6")) && !strings.HasPrefix(l, "From:") && !strings.HasPrefix(l, "To:") {
			t.Errorf("the IPv4 PBX got an IPv6 address: %q", l)
		}
	}
	offered := sdpAddr(t, string(m.(*sip.Request).Body()))
	if !offered.Addr().Is4() {
		t.Fatalf("the PBX was offered %v", offered)
	}
	req := m.(*sip.Request)
	b.send(pbx, src, withBody(fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: %s\nTo: %s;tag=pbx\nCall-ID: six\nCSeq: 1 INVITE\n"+
		"Contact: <sip:100@%s>\n", req.Via().Value(), req.From().Value(), req.To().Value(), addrOf(pbx)),
		sdp("127.0.0.2", int(addrOf(pbxRTP).Port()))))
	m, _ = b.recv(phone)
	ok := m.String()
	head, body, _ := strings.Cut(ok, "\r\n\r\n")
	for _, l := range strings.Split(head, "\r\n") {
		if strings.Contains(l, "127.0.0.") && !strings.HasPrefix(l, "From:") && !strings.HasPrefix(l, "To:") {
			t.Errorf("the IPv6 phone got an IPv4 address: %q", l)
		}
	}
	if !strings.Contains(body, "c=IN IP6 2001:db8:b::1") || strings.Contains(body, "IP4") {
		t.Errorf("the IPv6 phone got SDP\n%s", body)
	}
	answered := sdpAddr(t, body)
	answered = netip.AddrPortFrom(lo6, answered.Port()) // what the 1:1 NAT delivers
	if c := m.(*sip.Response).Contact(); c == nil || !strings.Contains(c.Address.Host, ":") {
		t.Errorf("the phone sees Contact %v, want sipcar's IPv6 address", c)
	}

	// Media across the families, both ways.
	pkt := append([]byte{0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9}, make([]byte, 160)...)
	buf := make([]byte, 2048)
	for i := range 3 {
		pkt[3] = byte(i + 1)
		if _, err := phoneRTP.WriteToUDPAddrPort(pkt, answered); err != nil {
			t.Fatal(err)
		}
	}
	_ = pbxRTP.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, from, err := pbxRTP.ReadFromUDPAddrPort(buf); err != nil || from != offered {
		t.Fatalf("the phone's IPv6 media at the IPv4 PBX: from %v, %v; want from %v", from, err, offered)
	}
	if _, err := pbxRTP.WriteToUDPAddrPort(pkt, offered); err != nil {
		t.Fatal(err)
	}
	_ = phoneRTP.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, from, err := phoneRTP.ReadFromUDPAddrPort(buf); err != nil || from.Addr().Unmap() != lo6 || from.Port() != answered.Port() {
		t.Fatalf("the PBX's IPv4 media at the IPv6 phone: from %v, %v; want from %v", from, err, answered)
	}
	if got := testutil.ToFloat64(b.r.metrics.calls.WithLabelValues("ipv6", "ipv4")); got != 1 {
		t.Errorf("sipcar_calls_total{outside=ipv6,inside=ipv4} = %v, want 1", got)
	}
	if got := testutil.CollectAndCount(b.r.metrics.calls); got != 1 {
		t.Errorf("%d family pairings counted, want the one", got)
	}
}
