package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// gatewayLab is the transparent topology: a phone inside, behind a NAT gateway, calls a server
// on the internet side directly; the gateway intercepts its SIP for sipcar (TPROXY) or hands it
// to the kernel's own SIP ALG.
//
//	phone 198.18.0.2 (eth0) == lan0 198.18.0.1  gw  wan0 198.51.100.1 == eth0 198.51.100.10 srv
//
// The phone's default route is the gateway, which forwards. The server has no route to the
// inside: like a host on the internet, it reaches the phone only through the gateway's public
// address, so whatever inside address leaks to it cannot be used. No namespace has a route out
// of the testbed.
type gatewayLab struct {
	*testbed
	phone, gw, srv *netns
}

// The addresses of the gateway topology.
var (
	gwPhoneAddr  = netip.MustParseAddr("198.18.0.2")
	gwInsideAddr = netip.MustParseAddr("198.18.0.1")
	gwPublicAddr = netip.MustParseAddr("198.51.100.1")
	gwServerAddr = netip.MustParseAddr("198.51.100.10")
)

// gwInsideText starts every inside address as written in a message.
const gwInsideText = "198.18.0."

// interceptPort is where sipcar listens for what the gateway intercepts (TPROXY target).
const interceptPort = 15060

func newGatewayLab(tb *testbed) *gatewayLab {
	tb.t.Helper()
	l := &gatewayLab{testbed: tb, phone: tb.host("phone"), gw: tb.host("gw"), srv: tb.host("srv")}
	tb.link(end{l.gw, "lan0", []string{"198.18.0.1/24"}}, end{l.phone, "eth0", []string{"198.18.0.2/24"}})
	tb.link(end{l.gw, "wan0", []string{"198.51.100.1/24"}}, end{l.srv, "eth0", []string{"198.51.100.10/24"}})
	if err := ipCmd("-n", l.phone.name, "route", "add", "default", "via", gwInsideAddr.String()); err != nil {
		tb.t.Fatal(err)
	}
	if err := l.gw.sysctl("net.ipv4.ip_forward=1"); err != nil {
		tb.t.Fatal(err)
	}
	return l
}

// nft loads an nftables script inside ns.
func (tb *testbed) nft(ns *netns, script string) {
	tb.t.Helper()
	needProgram(tb.t, "nft", "nftables")
	cmd := ns.command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.t.Fatalf("nft in %s: %v: %s\nscript:\n%s", ns.name, err, out, script)
	}
}

// nftList runs `nft list <what...>` inside ns and returns its output.
func nftList(ns *netns, what ...string) (string, error) {
	out, err := ns.command(append([]string{"nft", "list"}, what...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nft list %s in %s: %v: %s", strings.Join(what, " "), ns.name, err, out)
	}
	return string(out), nil
}

// interceptSIP makes the gateway steer the phones' SIP to sipcar: TPROXY of UDP and TCP to
// port 5060 coming in on lan0 to sipcar's transparent listeners, and the policy routing that
// delivers marked packets locally (NETLAB.md, "TPROXY"). Packets to a socket that sipcar bound
// transparently to a server's address (to answer as that server) are delivered to it too.
func (l *gatewayLab) interceptSIP() {
	l.t.Helper()
	l.nft(l.gw, fmt.Sprintf(`table ip sctproxy {
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto { tcp, udp } socket transparent 1 meta mark set 0x1 accept
		iifname "lan0" udp dport 5060 tproxy to :%d meta mark set 0x1 accept
		iifname "lan0" tcp dport 5060 tproxy to :%d meta mark set 0x1 accept
	}
}
`, interceptPort, interceptPort))
	if err := ipCmd("-n", l.gw.name, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100"); err != nil {
		l.t.Fatal(err)
	}
	if err := ipCmd("-n", l.gw.name, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"); err != nil {
		l.t.Fatal(err)
	}
}

// kernelALG makes the gateway a plain masquerading NAT with the kernel's SIP ALG
// (nf_conntrack_sip, nf_nat_sip): the sip helper assigned to new UDP and TCP flows to port 5060
// (kernels since 6.x assign none by default), masquerade out of wan0 (NETLAB.md, "The kernel's
// SIP ALG"). The empty dstnat chain registers the NAT hook that the helper's expectations (the
// media the SDP announced) are translated at.
func (l *gatewayLab) kernelALG() {
	l.t.Helper()
	l.nft(l.gw, `table inet sctalg {
	ct helper sipudp {
		type "sip" protocol udp;
		l3proto ip;
	}
	ct helper siptcp {
		type "sip" protocol tcp;
		l3proto ip;
	}
	chain pre {
		type filter hook prerouting priority filter; policy accept;
		ct state new udp dport 5060 ct helper set "sipudp"
		ct state new tcp dport 5060 ct helper set "siptcp"
	}
	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
	}
	chain srcnat {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" masquerade
	}
}
`)
}

// sipcarEnv is the configuration of sipcar as the gateway's transparent relay; extra
// variables follow (and win). Transparent mode denies by default what no policy rule permits:
// the phones of the inside may call.
func (l *gatewayLab) sipcarEnv(extra ...string) []string {
	listen := fmt.Sprintf(":%d", interceptPort)
	return append([]string{
		"SIPCAR_MODE=transparent",
		"SIPCAR_PUBLIC_ADDR=" + gwPublicAddr.String(),
		"SIPCAR_INSIDE_ADDR=" + gwInsideAddr.String(),
		"SIPCAR_INSIDE_NETS=198.18.0.0/24",
		"SIPCAR_LISTEN_UDP=" + listen,
		"SIPCAR_LISTEN_TCP=" + listen,
		"SIPCAR_MEDIA_MODE=fallback",
		"SIPCAR_POLICY=permit src=198.18.0.0/24",
	}, extra...)
}

// checkNoInsideOnPublic fails the test for every packet of a capture on the public side with
// an inside address in its IP header.
func checkNoInsideOnPublic(t *testing.T, pkts []packet) {
	t.Helper()
	bad := 0
	for _, p := range pkts {
		if insideNet.Contains(p.src.Addr()) || insideNet.Contains(p.dst.Addr()) {
			if bad < 5 {
				t.Errorf("packet with an inside address on the public side: %v -> %v %s", p.src, p.dst, p.proto)
			}
			bad++
		}
	}
	if bad > 5 {
		t.Errorf("... %d such packets in all", bad)
	}
}
