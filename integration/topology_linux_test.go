package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// upstreamLab is the sidecar topology: sipcar between phones on the internet side and a PBX
// inside.
//
//	phone 198.51.100.20 (eth0) == out0 198.51.100.1  car  in0 198.18.0.1 == eth0 198.18.0.10 pbx
//
// car runs sipcar; its public address is 198.51.100.1 and its inside-facing address
// 198.18.0.1. No namespace has a default route: nothing leaves the testbed. The IPv6 plan has
// the same shape in 2001:db8:b::/64 (public side) and 2001:db8:a::/64 (inside).
type upstreamLab struct {
	*testbed
	phone, car, pbx *netns
	plan            addrPlan
}

// addrPlan is the addresses of the upstream topology in one IP family.
type addrPlan struct {
	phone, public, inside, pbx netip.Addr
	insideNet, publicNet       netip.Prefix
	// insideText starts every inside address as written in a message.
	insideText string
}

// The IPv4 and IPv6 address plans.
var (
	plan4 = addrPlan{
		phone: netip.MustParseAddr("198.51.100.20"), public: netip.MustParseAddr("198.51.100.1"),
		inside: netip.MustParseAddr("198.18.0.1"), pbx: netip.MustParseAddr("198.18.0.10"),
		insideNet: netip.MustParsePrefix("198.18.0.0/24"), publicNet: netip.MustParsePrefix("198.51.100.0/24"),
		insideText: "198.18.0.",
	}
	plan6 = addrPlan{
		phone: netip.MustParseAddr("2001:db8:b::20"), public: netip.MustParseAddr("2001:db8:b::1"),
		inside: netip.MustParseAddr("2001:db8:a::1"), pbx: netip.MustParseAddr("2001:db8:a::10"),
		insideNet: netip.MustParsePrefix("2001:db8:a::/64"), publicNet: netip.MustParsePrefix("2001:db8:b::/64"),
		insideText: "2001:db8:a:",
	}
)

// The IPv4 addresses, which the tests that write SIP by hand use.
var (
	phoneAddr  = plan4.phone
	publicAddr = plan4.public
	pbxAddr    = plan4.pbx
	insideNet  = plan4.insideNet
)

// cidr writes an address of the plan with its network's prefix length.
func (p addrPlan) cidr(a netip.Addr) string {
	return netip.PrefixFrom(a, p.insideNet.Bits()).String()
}

// hostPort writes an address and port as sipp takes them ([v6]:port for IPv6).
func hostPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// newUpstreamLab builds the sidecar topology in IPv4.
func newUpstreamLab(tb *testbed) *upstreamLab { return newUpstreamLabPlan(tb, plan4) }

// newUpstreamLabPlan builds the sidecar topology with an address plan.
func newUpstreamLabPlan(tb *testbed, p addrPlan) *upstreamLab {
	tb.t.Helper()
	l := &upstreamLab{testbed: tb, phone: tb.host("phone"), car: tb.host("car"), pbx: tb.host("pbx"), plan: p}
	tb.link(end{l.car, "out0", []string{p.cidr(p.public)}}, end{l.phone, "eth0", []string{p.cidr(p.phone)}})
	tb.link(end{l.car, "in0", []string{p.cidr(p.inside)}}, end{l.pbx, "eth0", []string{p.cidr(p.pbx)}})
	return l
}

// sipcarEnv is the configuration of sipcar in the upstream topology, with the PBX reached over
// upstreamTransport; extra variables follow (and win).
func (l *upstreamLab) sipcarEnv(upstreamTransport string, extra ...string) []string {
	p := l.plan
	return append([]string{
		"SIPCAR_MODE=upstream",
		"SIPCAR_UPSTREAM=sip:" + hostPort(p.pbx, 5060) + ";transport=" + upstreamTransport,
		"SIPCAR_PUBLIC_ADDR=" + p.public.String(),
		"SIPCAR_INSIDE_ADDR=" + p.inside.String(),
		"SIPCAR_INSIDE_NETS=" + p.insideNet.String(),
		"SIPCAR_MEDIA_MODE=fallback",
	}, extra...)
}

// waitListening waits until something listens on port inside ns (proto "udp" or "tcp"), for
// peers that print nothing when they are ready.
func (tb *testbed) waitListening(ns *netns, proto string, port int) {
	tb.t.Helper()
	flag := "-Hlun"
	if proto == "tcp" {
		flag = "-Hltn"
	}
	eventually(tb.t, 10*time.Second, fmt.Sprintf("%s port %d listening in %s", proto, port, ns.name), func() (bool, string) {
		out, err := ns.command("ss", flag, fmt.Sprintf("sport = :%d", port)).CombinedOutput()
		if err != nil {
			return false, fmt.Sprintf("ss: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out)) != "", string(out)
	})
}
