package mediarelay

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// bridgeInside turns the lab into a Docker host's shape: sipcar's inside address moves to a
// bridge, br0, whose port is the veth to the phone, as a container's would be.
//
//	phone 198.18.0.2 --ph0 == in0 (port of br0 198.18.0.1) sipcar 198.51.100.1 --out0 == rm0-- remote
func (l *lab) bridgeInside(t testing.TB) {
	t.Helper()
	s := l.sipcar
	run(t, "ip", "-n", s, "addr", "flush", "dev", "in0")
	run(t, "ip", "-n", s, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", s, "link", "set", "in0", "master", "br0")
	for _, a := range []string{"198.18.0.1/24", "2001:db8:a::1/64"} {
		args := []string{"-n", s, "addr", "add", a, "dev", "br0"}
		if strings.Contains(a, ":") {
			args = append(args, "nodad")
		}
		run(t, "ip", args...)
	}
	run(t, "ip", "-n", s, "link", "set", "br0", "up")
}

// sides are the lab's two sides as cmd/sipcar describes them: the inside reached through the
// route to its network, the public side by its address (the lab has no default route).
func labSides() []Side {
	return []Side{
		{Name: "inside", Addrs: []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:db8:a::1")},
			Peers: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24"), netip.MustParsePrefix("2001:db8:a::/64")}},
		{Name: "public", Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:b::1")}},
	}
}

// TestAutoModeProbesBridges: with the phone behind a bridge in sipcar's namespace (a Docker
// bridge), ModeAuto probes the bridge at start-up and chooses per side from what the probe
// packet reached. With br_netfilter on, the probe bypasses the fan-in socket, so the inside
// (through br0) is received per port while the public side (out0, no bridge) keeps fan-in;
// with it off, the probe reaches fan-in and both sides use it. Media flows both ways in each
// case, by the path the counters say, and the probe leaves no interface behind.
func TestAutoModeProbesBridges(t *testing.T) {
	for _, tc := range []struct {
		name        string
		brNetfilter string
		inside      SidePath
	}{
		{"br_netfilter", "1", SidePath{Side: "inside", Ingress: "br0", Path: PathPerPort, Reason: "probe-bypassed"}},
		{"no_br_netfilter", "0", SidePath{Side: "inside", Ingress: "br0", Path: PathFanIn, Reason: "probe-fanin"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			l.bridgeInside(t)
			// The public side is found by the default route here (towards the remote, which
			// has no route on), by its address in TestAutoModeWithoutBridges.
			run(t, "ip", "-n", l.sipcar, "route", "add", "default", "via", "198.51.100.2")
			run(t, "ip", "netns", "exec", l.sipcar, "sysctl", "-qw",
				"net.bridge.bridge-nf-call-iptables="+tc.brNetfilter, "net.bridge.bridge-nf-call-ip6tables="+tc.brNetfilter)
			logs := &lockedBuffer{}
			r := l.startRelay(t, relayMode{"auto", ModeAuto, SendRaw},
				Config{Sides: labSides(), Logger: slog.New(slog.NewTextHandler(logs, nil))})

			got := r.Paths()
			want := []SidePath{tc.inside, {Side: "public", Ingress: "out0", Path: PathFanIn, Reason: "not-bridged"}}
			if len(got) != len(want) {
				t.Fatalf("Paths() = %+v; want %+v", got, want)
			}
			for i := range want {
				g := got[i]
				g.Detail = ""
				if g != want[i] {
					t.Errorf("Paths()[%d] = %+v (%s); want %+v", i, g, got[i].Detail, want[i])
				}
			}
			if !strings.Contains(got[1].Detail, "the default route") {
				t.Errorf("the public side was not found by the default route: %s", got[1].Detail)
			}
			if n := strings.Count(logs.String(), "mediarelay: receive path"); n != 2 {
				t.Errorf("%d receive path lines logged, want one per side:\n%s", n, logs)
			}
			in(t, l.sipcar, func() {
				for _, name := range []string{probeOuter, probeInner} {
					if _, err := net.InterfaceByName(name); err == nil {
						t.Errorf("the probe's %s is still there", name)
					}
				}
			})
			table := nftList(t, l)
			wantRule := `meta iifkind "bridge" return`
			if tc.inside.Path == PathFanIn {
				wantRule = `meta iifkind "bridge" iifname != "br0" return`
			}
			if !strings.Contains(table, wantRule) {
				t.Errorf("the table lacks %q:\n%s", wantRule, table)
			}

			for i, f := range families {
				// Relay ports are numbered across addresses: each family its own.
				spec := pairSpec(f)
				for _, a := range []*netip.AddrPort{&spec.A.RTP, &spec.A.RTCP, &spec.B.RTP, &spec.B.RTCP} {
					*a = netip.AddrPortFrom(a.Addr(), a.Port()+uint16(10*i))
				}
				phone := l.listen(t, l.phone, spec.A.Peer.String())
				remote := l.listen(t, l.remote, spec.B.Peer.String())
				s := addStream(t, r, spec)
				for i := range 3 {
					p := rtpPacket(uint16(i), 0, 0xa, byte(i))
					phone.send(spec.A.RTP, p)
					remote.expect(p, spec.B.RTP)
					back := rtpPacket(uint16(i), 0, 0xb, byte(i))
					remote.send(spec.B.RTP, back)
					phone.expect(back, spec.A.RTP)
				}
				r.RemoveStream(s)
			}
			c := r.Counters()
			// Each family: 3 packets from the phone through the bridge, 3 from the remote.
			wantRecv := [2]uint64{PathFanIn: 6, PathPerPort: 6}
			if tc.inside.Path == PathFanIn {
				wantRecv = [2]uint64{PathFanIn: 12, PathPerPort: 0}
			}
			if c.Received != wantRecv {
				t.Errorf("packets received by path (fan-in, per-port) = %v; want %v", c.Received, wantRecv)
			}
		})
	}
}

// TestAutoModeWithoutBridges: where no side's media crosses a bridge, ModeAuto is fan-in for
// every side, each found by its own route.
func TestAutoModeWithoutBridges(t *testing.T) {
	l := newLab(t)
	r := l.startRelay(t, relayMode{"auto", ModeAuto, SendRaw}, Config{Sides: labSides()})
	var got []string
	for _, p := range r.Paths() {
		got = append(got, fmt.Sprintf("%s %s %v %s", p.Side, p.Ingress, p.Path, p.Reason))
	}
	want := "inside in0 fan-in not-bridged, public out0 fan-in not-bridged"
	if strings.Join(got, ", ") != want {
		t.Errorf("Paths() = %q; want %q", strings.Join(got, ", "), want)
	}
	if p := r.Paths(); len(p) == 2 && !strings.Contains(p[1].Detail, "the interface of 198.51.100.1") {
		t.Errorf("without a default route, the public side was not found by its address: %s", p[1].Detail)
	}
	spec := pairSpec(families[0])
	phone := l.listen(t, l.phone, spec.A.Peer.String())
	remote := l.listen(t, l.remote, spec.B.Peer.String())
	addStream(t, r, spec)
	p := rtpPacket(1, 0, 0xa, 1)
	phone.send(spec.A.RTP, p)
	remote.expect(p, spec.B.RTP)
	if c := r.Counters(); c.Received != [2]uint64{PathFanIn: 1} {
		t.Errorf("packets received by path = %v; want one, by fan-in", c.Received)
	}
}

// TestProbeFrame: the frame the probe writes carries valid IPv4 and IPv6 UDP checksums (a
// wrong one and the kernel drops the probe before any socket, which reads as "lost").
func TestProbeFrame(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	for _, tc := range []struct{ src, dst string }{
		{"198.18.0.254:9", "198.18.0.1:20000"},
		{"[2001:db8:a::fffe]:9", "[2001:db8:a::1]:20000"},
	} {
		src, dst := netip.MustParseAddrPort(tc.src), netip.MustParseAddrPort(tc.dst)
		f := probeFrame(mac, mac, src, dst, []byte("sipcar-probe-abc"))
		ip := f[14:]
		hdr := 20
		pseudo := append(src.Addr().AsSlice(), dst.Addr().AsSlice()...)
		udp := ip[hdr:]
		if src.Addr().Is4() {
			if s := onesSum(0, ip[:20]); s != 0xffff {
				t.Errorf("%s: IPv4 header sum %#x; want 0xffff", tc.src, s)
			}
			pseudo = append(pseudo, 0, 17, byte(len(udp)>>8), byte(len(udp)))
		} else {
			hdr = 40
			udp = ip[hdr:]
			pseudo = append(pseudo, 0, 0, byte(len(udp)>>8), byte(len(udp)), 0, 0, 0, 17)
		}
		if s := onesSum(onesSum(0, pseudo), udp); s != 0xffff {
			t.Errorf("%s: UDP sum %#x; want 0xffff", tc.src, s)
		}
		if got := netip.AddrPortFrom(dst.Addr(), uint16(udp[2])<<8|uint16(udp[3])); got != dst {
			t.Errorf("destination %v; want %v", got, dst)
		}
	}
}

// onesSum adds b to the one's complement sum acc (RFC 1071), folded to 16 bits, 16 bits at a
// time: the obvious way, to check the frame against.
func onesSum(acc uint16, b []byte) uint16 {
	s := uint32(acc)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// TestProbeRuleSkipsBridges: ModeAuto's table leaves packets from bridges to the ports' sockets
// unless the probe saw fan-in work there; ModeFanIn's steers everything.
func TestProbeRuleSkipsBridges(t *testing.T) {
	for _, tc := range []struct {
		spec nftSpec
		want string
	}{
		{nftSpec{min: 20000, max: 29999, port4: 1234}, ""},
		{nftSpec{min: 20000, max: 29999, port4: 1234, skipBridges: true}, "\t\tmeta iifkind \"bridge\" return\n"},
		{nftSpec{min: 20000, max: 29999, port4: 1234, skipBridges: true, fanInBridges: []string{"br-1", "docker0"}},
			"\t\tmeta iifkind \"bridge\" iifname != { \"br-1\", \"docker0\" } return\n"},
	} {
		got := nftRules(tc.spec)
		if tc.want == "" {
			if strings.Contains(got, "iifkind") {
				t.Errorf("%+v: the table skips bridges:\n%s", tc.spec, got)
			}
			continue
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("%+v: want %q in:\n%s", tc.spec, tc.want, got)
		}
		if strings.Index(got, "iifkind") > strings.Index(got, "tproxy") {
			t.Errorf("%+v: the bridge rule comes after the TPROXY rule:\n%s", tc.spec, got)
		}
	}
}
