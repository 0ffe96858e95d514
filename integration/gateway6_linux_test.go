package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// The dual-stack gateway topology: [gatewayLab] with an IPv6 plan beside its IPv4 one.
//
//	phone 198.18.0.2   (eth0) == lan0 198.18.0.1    gw  wan0 198.51.100.1  == eth0 198.51.100.10  srv
//	      2001:db8:a::2                2001:db8:a::1          2001:db8:b::1          2001:db8:b::10
//
// The phone's default routes (both families) go through the gateway, which forwards both.
var (
	gw6PhoneAddr  = netip.MustParseAddr("2001:db8:a::2")
	gw6InsideAddr = netip.MustParseAddr("2001:db8:a::1")
	gw6PublicAddr = netip.MustParseAddr("2001:db8:b::1")
	gw6ServerAddr = netip.MustParseAddr("2001:db8:b::10")
	gw6InsideNet  = netip.MustParsePrefix("2001:db8:a::/64")
	gw6PublicNet  = netip.MustParsePrefix("2001:db8:b::/64")
)

func newDualStackGatewayLab(tb *testbed) *gatewayLab {
	tb.t.Helper()
	l := &gatewayLab{testbed: tb, phone: tb.host("phone"), gw: tb.host("gw"), srv: tb.host("srv")}
	tb.link(end{l.gw, "lan0", []string{"198.18.0.1/24", "2001:db8:a::1/64"}}, end{l.phone, "eth0", []string{"198.18.0.2/24", "2001:db8:a::2/64"}})
	tb.link(end{l.gw, "wan0", []string{"198.51.100.1/24", "2001:db8:b::1/64"}}, end{l.srv, "eth0", []string{"198.51.100.10/24", "2001:db8:b::10/64"}})
	for _, r := range [][]string{
		{"-n", l.phone.name, "route", "add", "default", "via", gwInsideAddr.String()},
		{"-n", l.phone.name, "-6", "route", "add", "default", "via", gw6InsideAddr.String()},
	} {
		if err := ipCmd(r...); err != nil {
			tb.t.Fatal(err)
		}
	}
	if err := l.gw.sysctl("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		tb.t.Fatal(err)
	}
	return l
}

// interceptSIP6 is [gatewayLab.interceptSIP] for IPv6: TPROXY of UDP and TCP to port 5060
// coming in on lan0 to sipcar's transparent listeners (the IPv6 twins of the IPv4 wildcard),
// in a table ip6, and the IPv6 policy routing that delivers marked packets locally.
func (l *gatewayLab) interceptSIP6() {
	l.t.Helper()
	l.nft(l.gw, fmt.Sprintf(`table ip6 sctproxy6 {
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto { tcp, udp } socket transparent 1 meta mark set 0x1 accept
		iifname "lan0" udp dport 5060 tproxy to :%d meta mark set 0x1 accept
		iifname "lan0" tcp dport 5060 tproxy to :%d meta mark set 0x1 accept
	}
}
`, interceptPort, interceptPort))
	if err := ipCmd("-n", l.gw.name, "-6", "rule", "add", "fwmark", "0x1/0x1", "lookup", "100"); err != nil {
		l.t.Fatal(err)
	}
	if err := ipCmd("-n", l.gw.name, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100"); err != nil {
		l.t.Fatal(err)
	}
}

// TestTransparentCallIPv6 is the canonical scenario on a dual-stack NAT gateway, in IPv6: a
// phone inside calls a server on the internet side directly; the gateway's ip6 TPROXY rules
// hand its SIP to sipcar's transparent listeners, which relay it from the gateway's public
// IPv6 address; the media goes through the fan-in path (sipcar's own table inet with its
// "tproxy ip6" rule). The call succeeds (sipp UAC and UAS, RTP echoed) over UDP and TCP; mid-call
// both sip-rtp bindings are at the gateway's IPv6 addresses, latched the right peers and
// carried packets both ways, all read by fan-in and none by a port's socket; the text displays
// show them as [address]:port; no media binding is left after BYE; the phone gets its
// replies from the server it addressed; on the public side, no packet and no address field of a
// message names an inside address, and RTP went both ways between the server and the gateway.
func TestTransparentCallIPv6(t *testing.T) {
	for _, transport := range []string{"udp", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			testTransparentCallIPv6(t, transport)
		})
	}
}

func testTransparentCallIPv6(t *testing.T, transport string) {
	needProgram(t, "nft", "nftables")
	l := newDualStackGatewayLab(newTestbed(t))
	tcp := transport == "tcp"
	l.interceptSIP6()
	lan := l.capture(l.gw, "lan0", netip.AddrPortFrom(gw6PhoneAddr, 9))
	wan := l.capture(l.gw, "wan0", netip.AddrPortFrom(gw6ServerAddr, 9))
	srv := l.sipp(l.srv, "server", sippOpts{scenario: "uas_media.xml", local: gw6ServerAddr.String(), tcp: tcp, echo: true})
	l.waitListening(l.srv, transport, 5060)
	listen := fmt.Sprintf(":%d", interceptPort)
	car := l.startSipcar(l.gw,
		"SIPCAR_MODE=transparent",
		"SIPCAR_PUBLIC_ADDR="+gwPublicAddr.String()+","+gw6PublicAddr.String(),
		"SIPCAR_INSIDE_ADDR="+gwInsideAddr.String()+","+gw6InsideAddr.String(),
		"SIPCAR_INSIDE_NETS=198.18.0.0/24,"+gw6InsideNet.String(),
		"SIPCAR_LISTEN_UDP="+listen,
		"SIPCAR_LISTEN_TCP="+listen,
		"SIPCAR_MEDIA_MODE=fanin",
		"SIPCAR_POLICY=permit src=198.18.0.0/24; permit src="+gw6InsideNet.String(),
	)
	logCountersOnFailure(t, car)
	if table, err := nftList(l.gw, "table", "inet", "sipcar"); err != nil || !strings.Contains(table, "tproxy ip6 to ") {
		t.Errorf("sipcar in fan-in mode with an IPv6 address: its nftables table has no \"tproxy ip6\" rule (%v):\n%s", err, table)
	}
	before := car.metrics(t)
	server := netip.AddrPortFrom(gw6ServerAddr, 5060)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: gw6PhoneAddr.String(),
		remote: server.String(), tcp: tcp, pauseMS: 3000, rtpPcap: true})

	phoneMedia, srvMedia := netip.AddrPortFrom(gw6PhoneAddr, 6000), netip.AddrPortFrom(gw6ServerAddr, 6000)
	m := car.waitMap(t, 20*time.Second, "media both ways through both sip-rtp bindings at the gateway's IPv6 addresses", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 2 {
			return false
		}
		for _, e := range rtp {
			want := map[string][3]netip.AddrPort{
				"outside": {netip.AddrPortFrom(gw6PublicAddr, 0), phoneMedia, srvMedia},
				"inside":  {netip.AddrPortFrom(gw6InsideAddr, 0), srvMedia, phoneMedia},
			}[e.Faces]
			if e.PacketsSent == 0 || e.PacketsReceived == 0 || e.Peer == nil ||
				e.Address.Addr() != want[0].Addr() || e.ForwardTo != want[1] || *e.Peer != want[2] {
				return false
			}
		}
		return true
	})
	checkDisplays(t, car, m)

	phone.succeeded(t, 30*time.Second, 1)
	srv.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	after := car.metrics(t)
	fanIn := sumMetric(after, "sipcar_media_packets_received_total", `path="fan-in"`) - sumMetric(before, "sipcar_media_packets_received_total", `path="fan-in"`)
	perPort := sumMetric(after, "sipcar_media_packets_received_total", `path="per-port"`) - sumMetric(before, "sipcar_media_packets_received_total", `path="per-port"`)
	// The phone plays 100 packets, the server echoes them.
	if fanIn < 100 || perPort != 0 {
		t.Errorf("media packets sipcar read during the call: %v by fan-in, %v by a port's socket; want at least 100 by fan-in, none otherwise", fanIn, perPort)
	}

	lanPkts := lan.stop(t)
	replies := 0
	for _, w := range wireMessages(lanPkts) {
		if w.status() == 0 || w.dst.Addr() != gw6PhoneAddr {
			continue
		}
		replies++
		if w.src != server {
			t.Errorf("the phone got %q from %v; want it from the server it addressed, %v", firstLine(w.raw), w.src, server)
		}
	}
	if replies < 3 { // 180, 200 to the INVITE, 200 to the BYE
		t.Errorf("%d SIP responses reached the phone on lan0; want at least 3 (180, 200, 200)", replies)
	}
	// The phone reaches the internet through the gateway: what it is handed is IPv6, of
	// either side; its media goes to the gateway's inside address.
	checkPeerLink(t, peerLink{where: "the LAN", pkts: lanPkts, peer: gw6PhoneAddr, side: netip.MustParsePrefix("2001:db8::/32"),
		media: phoneMedia, sipcar: gw6InsideAddr, starts: []string{"SIP/2.0 180 ", "SIP/2.0 200 "}})
	checkPeerLink(t, peerLink{where: "the public side", pkts: wan.stop(t), peer: gw6ServerAddr, side: gw6PublicNet,
		media: srvMedia, sipcar: gw6PublicAddr, starts: []string{"INVITE ", "ACK ", "BYE "}})
}
