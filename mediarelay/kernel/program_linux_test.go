package kernel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// requireRoot skips (outside CI) or fails (in CI) a test that needs root for bpf().
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("missing prerequisite: root (bpf, tc)")
	}
	t.Skip("needs root (bpf, tc)")
}

func openTest(t testing.TB) *Forwarder {
	t.Helper()
	requireRoot(t)
	f, err := Open(Config{Rules: 16, Slots: 16})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

const (
	tcActRedirect = 7
	passed        = 0xffffffff // TCX_NEXT (-1) as the test run returns it
)

var (
	ethHdr = []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1}
)

// udpPacket builds an Ethernet frame carrying a UDP datagram from src to dst, checksums right
// (or a zero UDP checksum over IPv4 if noCsum).
func udpPacket(src, dst netip.AddrPort, payload []byte, noCsum bool) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	pkt := append([]byte{}, ethHdr...)
	if src.Addr().Is4() {
		pkt = append(pkt, 0x08, 0x00)
		ip := make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], ^onesSum(ip))
		if !noCsum {
			binary.BigEndian.PutUint16(udp[6:], udpCsum(ip[12:16], ip[16:20], udp))
		}
		return append(append(pkt, ip...), udp...)
	}
	pkt = append(pkt, 0x86, 0xdd)
	ip := make([]byte, 40)
	ip[0], ip[6], ip[7] = 0x60, 17, 64
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	binary.BigEndian.PutUint16(udp[6:], udpCsum(ip[8:24], ip[24:40], udp))
	return append(append(pkt, ip...), udp...)
}

func onesSum(b ...[]byte) uint16 {
	var sum uint32
	for _, p := range b {
		for i := 0; i+1 < len(p); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(p[i:]))
		}
		if len(p)%2 == 1 {
			sum += uint32(p[len(p)-1]) << 8
		}
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

func udpCsum(src, dst, udp []byte) uint16 {
	pseudo := []byte{0, 17, 0, 0}
	binary.BigEndian.PutUint16(pseudo[2:], uint16(len(udp)))
	c := udp[6:8]
	saved := [2]byte{c[0], c[1]}
	c[0], c[1] = 0, 0
	sum := ^onesSum(src, dst, pseudo, udp)
	c[0], c[1] = saved[0], saved[1]
	if sum == 0 {
		sum = 0xffff
	}
	return sum
}

// checkPacket verifies that pkt carries a datagram from src to dst with payload and sound
// checksums.
func checkPacket(t *testing.T, pkt []byte, src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	want := udpPacket(src, dst, payload, false)
	if !bytes.Equal(pkt, want) {
		t.Fatalf("packet out:\n got %x\nwant %x", pkt, want)
	}
}

func run(t *testing.T, f *Forwarder, pkt []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(pkt)+64)
	ret, err := f.prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: out})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return ret, out[:len(pkt)]
}

func TestProgramForwardsLatchedLegs(t *testing.T) {
	f := openTest(t)
	rtp := make([]byte, 160+12)
	rtp[0], rtp[1] = 0x80, 0
	for i := range rtp[12:] {
		rtp[12+i] = byte(i * 7)
	}
	rtcp := []byte{0x80, 200, 0, 6, 1, 2, 3, 4}
	for _, tc := range []struct {
		name                string
		relay, peer         netip.AddrPort
		from, to            netip.AddrPort
		mux                 bool
		noCsum              bool
		attacker            netip.AddrPort
		payloadForwarded    []byte
		payloadLeftToKernel []byte
	}{
		{name: "ipv4", relay: ap("198.18.0.1:20000"), peer: ap("198.18.0.2:30000"), from: ap("198.51.100.1:20002"), to: ap("198.51.100.2:40000"),
			attacker: ap("198.18.0.66:30000")},
		{name: "ipv4 no checksum", relay: ap("198.18.0.1:20000"), peer: ap("198.18.0.2:30001"), from: ap("198.51.100.1:20002"), to: ap("198.51.100.2:40000"),
			noCsum: true, attacker: ap("198.18.0.2:30002")},
		{name: "ipv6", relay: ap("[2001:db8:a::1]:20000"), peer: ap("[2001:db8:a::2]:30000"), from: ap("[2001:db8:b::1]:20002"), to: ap("[2001:db8:b::2]:40000"),
			attacker: ap("[2001:db8:a::66]:30000")},
		{name: "ipv4 to ipv4 mux", relay: ap("198.18.0.1:20010"), peer: ap("198.18.0.2:30010"), from: ap("198.51.100.1:20012"), to: ap("203.0.113.9:65535"),
			mux: true, attacker: ap("198.18.0.2:30011")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slot, ok := f.AllocSlot()
			if !ok {
				t.Fatal("no slot")
			}
			k := NewKey(tc.relay, tc.peer)
			if err := f.Apply([]Key{k}, []Rule{NewRule(k, tc.from, tc.to, tc.mux, 1, slot)}, nil); err != nil {
				t.Fatal(err)
			}
			// The latched peer's RTP: rewritten, counted, redirected.
			for i := 1; i <= 3; i++ {
				pkt := udpPacket(tc.peer, tc.relay, rtp, tc.noCsum)
				ret, out := run(t, f, pkt)
				if ret != tcActRedirect {
					t.Fatalf("packet %d: returned %d, want TC_ACT_REDIRECT", i, int32(ret))
				}
				if tc.noCsum {
					want := udpPacket(tc.from, tc.to, rtp, true)
					if !bytes.Equal(out, want) {
						t.Fatalf("packet out:\n got %x\nwant %x", out, want)
					}
				} else {
					checkPacket(t, out, tc.from, tc.to, rtp)
				}
				if c := f.Counts(slot); c.Packets != uint64(i) || c.Bytes != uint64(i*len(rtp)) || c.LastNs == 0 {
					t.Fatalf("after %d packets: counts %+v, want %d packets of %d bytes and a time", i, c, i, len(rtp))
				}
			}
			// Anyone else's: untouched, uncounted, on to userspace.
			pkt := udpPacket(tc.attacker, tc.relay, rtp, false)
			if ret, out := run(t, f, pkt); ret != passed || !bytes.Equal(out, pkt) {
				t.Fatalf("attacker's packet: returned %d, changed %v; want it passed on unchanged", int32(ret), !bytes.Equal(out, pkt))
			}
			// RTCP on a muxed leg goes to userspace; on another leg it is only payload.
			pkt = udpPacket(tc.peer, tc.relay, rtcp, false)
			ret, out := run(t, f, pkt)
			if tc.mux && (ret != passed || !bytes.Equal(out, pkt)) {
				t.Fatalf("muxed RTCP: returned %d; want it passed on unchanged", int32(ret))
			}
			if !tc.mux && ret != tcActRedirect {
				t.Fatalf("RTCP-looking payload on a leg without mux: returned %d, want TC_ACT_REDIRECT", int32(ret))
			}
			if err := f.Apply(nil, nil, []Key{k}); err != nil {
				t.Fatal(err)
			}
			pkt = udpPacket(tc.peer, tc.relay, rtp, false)
			if ret, _ := run(t, f, pkt); ret != passed {
				t.Fatalf("after the rule's deletion: returned %d, want the packet passed on", int32(ret))
			}
		})
	}
}

func TestProgramLeavesOtherPackets(t *testing.T) {
	f := openTest(t)
	relay, peer := ap("198.18.0.1:20000"), ap("198.18.0.2:30000")
	k := NewKey(relay, peer)
	if err := f.Apply([]Key{k}, []Rule{NewRule(k, ap("198.51.100.1:20002"), ap("198.51.100.2:40000"), false, 1, 0)}, nil); err != nil {
		t.Fatal(err)
	}
	good := udpPacket(peer, relay, make([]byte, 172), false)
	mutate := func(f func(p []byte)) []byte {
		p := append([]byte{}, good...)
		f(p)
		return p
	}
	for name, pkt := range map[string][]byte{
		"ip options":    mutate(func(p []byte) { p[14] = 0x46 }),
		"fragment":      mutate(func(p []byte) { p[14+6] = 0x20 }),
		"later frag":    mutate(func(p []byte) { p[14+7] = 0x10 }),
		"tcp":           mutate(func(p []byte) { p[14+9] = 6 }),
		"arp":           mutate(func(p []byte) { p[12], p[13] = 0x08, 0x06 }),
		"truncated":     good[:14+20+4],
		"short udp len": mutate(func(p []byte) { p[14+20+4], p[14+20+5] = 0, 7 }),
		"udp len < ip":  mutate(func(p []byte) { p[14+20+5]-- }),
		"udp len > ip":  mutate(func(p []byte) { p[14+20+5]++ }),
		"ip len > pkt":  mutate(func(p []byte) { p[14+3]++; p[14+20+5]++ }),
	} {
		if ret, out := run(t, f, pkt); ret != passed || !bytes.Equal(out, pkt) {
			t.Errorf("%s: returned %d, changed %v; want it passed on unchanged", name, int32(ret), !bytes.Equal(out, pkt))
		}
	}
	if c := f.Counts(0); c.Packets != 0 {
		t.Errorf("counted %d packets that were not forwarded", c.Packets)
	}
}

func TestOpenRefusedWithoutPrivilege(t *testing.T) {
	if os.Getenv("SIPCAR_KERNEL_CHILD") == "1" {
		_, err := Open(Config{Rules: 4, Slots: 4})
		if err == nil {
			os.Exit(3)
		}
		os.Stdout.WriteString(err.Error())
		os.Exit(0)
	}
	requireRoot(t)
	// setpriv drops every capability of a child; the child reports what Open said.
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv")
	}
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
		os.Args[0], "-test.run=^TestOpenRefusedWithoutPrivilege$")
	cmd.Env = append(os.Environ(), "SIPCAR_KERNEL_CHILD=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v (%s)", err, out)
	}
	if !strings.Contains(string(out), "CAP_BPF") {
		t.Errorf("refusal %q does not name the capability", out)
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
