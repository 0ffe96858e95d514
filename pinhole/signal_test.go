package pinhole

import (
	"errors"
	"net/netip"
	"testing"
)

func TestSignalOneBindingPerEndpointAndTransport(t *testing.T) {
	m, f := newTestMap(t, Config{})
	a, err := m.Signaling(Inside, "UDP", ap("198.18.0.10:5060"), "call-1")
	if err != nil {
		t.Fatal(err)
	}
	if a.Type() != TypeSIP || a.Faces() != Outside || a.Transport() != "udp" {
		t.Errorf("binding = %v facing %v over %s", a.Type(), a.Faces(), a.Transport())
	}
	if got := a.Address(); got.Addr() != testPublic.IPv4 || !m.cfg.SignalingPorts.Contains(got.Port()) {
		t.Errorf("address = %v, want %v and a port in %v", got, testPublic.IPv4, m.cfg.SignalingPorts)
	}
	if a.ForwardTo() != ap("198.18.0.10:5060") {
		t.Errorf("forwards to %v", a.ForwardTo())
	}
	if !f.isHeld("udp", a.Address()) {
		t.Errorf("udp port %v not reserved", a.Address())
	}

	again, err := m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "call-2")
	if err != nil || again != a {
		t.Errorf("same endpoint again = %v, %v; want the same binding", again, err)
	}
	if again.CallID() != "call-1" {
		t.Errorf("call-id = %q, want the creating message's", again.CallID())
	}

	tcp, err := m.Signaling(Inside, "tls", ap("198.18.0.10:5060"), "call-1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := m.Signaling(Inside, "udp", ap("198.18.0.11:5060"), "call-1")
	if err != nil {
		t.Fatal(err)
	}
	ports := map[uint16]bool{a.Address().Port(): true, tcp.Address().Port(): true, other.Address().Port(): true}
	if len(ports) != 3 {
		t.Errorf("ports %v: want one per endpoint and transport", ports)
	}
	if !f.isHeld("tcp", tcp.Address()) || tcp.Protocol() != "tcp" {
		t.Errorf("tls binding %v: tcp port not reserved", tcp.Address())
	}

	// The other direction: an outside address gets sipcar's inside address.
	pbx, err := m.Signaling(Outside, "udp", ap("203.0.113.5:5060"), "call-1")
	if err != nil {
		t.Fatal(err)
	}
	if pbx.Faces() != Inside || pbx.Address().Addr() != testInside.IPv4 {
		t.Errorf("outside endpoint bound at %v facing %v", pbx.Address(), pbx.Faces())
	}
}

func TestSignalFamily(t *testing.T) {
	m, _ := newTestMap(t, Config{Public: Addrs{IPv4: testPublic.IPv4}})
	b6, err := m.Signaling(Outside, "udp", ap("[2001:db8:c::5]:5060"), "c")
	if err != nil {
		t.Fatal(err)
	}
	if b6.Address().Addr() != testInside.IPv6 {
		t.Errorf("IPv6 endpoint bound at %v, want %v", b6.Address(), testInside.IPv6)
	}
	// The public side has no IPv6: an IPv6 phone inside is reached at the IPv4 address.
	b, err := m.Signaling(Inside, "udp", ap("[2001:db8:a::10]:5060"), "c")
	if err != nil {
		t.Fatal(err)
	}
	if b.Address().Addr() != testPublic.IPv4 {
		t.Errorf("bound at %v, want the public IPv4 address", b.Address())
	}
	// An IPv4-mapped address is the IPv4 endpoint.
	mapped, err := m.Signaling(Outside, "udp", ap("[::ffff:203.0.113.5]:5060"), "c")
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := m.Signaling(Outside, "udp", ap("203.0.113.5:5060"), "c")
	if mapped != plain || plain.Address().Addr() != testInside.IPv4 {
		t.Errorf("mapped %v and plain %v differ", mapped.Address(), plain.Address())
	}
}

func TestSignalInvalid(t *testing.T) {
	m, _ := newTestMap(t, Config{})
	for _, tc := range []struct {
		side      Side
		transport string
		addr      netip.AddrPort
	}{
		{0, "udp", ap("198.18.0.10:5060")},
		{Inside, "sctp", ap("198.18.0.10:5060")},
		{Inside, "udp", netip.AddrPort{}},
		{Inside, "udp", ap("198.18.0.10:0")},
	} {
		if _, err := m.Signaling(tc.side, tc.transport, tc.addr, "c"); !errors.Is(err, ErrInvalid) {
			t.Errorf("Signal(%v, %q, %v) = %v, want ErrInvalid", tc.side, tc.transport, tc.addr, err)
		}
	}
}

func TestResolve(t *testing.T) {
	m, _ := newTestMap(t, Config{})
	b, err := m.Signaling(Inside, "udp", ap("198.18.0.10:5062"), "c")
	if err != nil {
		t.Fatal(err)
	}
	got, ok := m.Resolve(Outside, b.Address())
	if !ok || got != b || got.ForwardTo() != ap("198.18.0.10:5062") {
		t.Fatalf("Resolve(outside, %v) = %v, %v", b.Address(), got, ok)
	}
	if _, ok := m.Resolve(Inside, b.Address()); ok {
		t.Errorf("resolved from the wrong side")
	}
	wrongAddr := netip.AddrPortFrom(testInside.IPv4, b.Address().Port())
	if _, ok := m.Resolve(Outside, wrongAddr); ok {
		t.Errorf("resolved %v, not sipcar's public address", wrongAddr)
	}
	if _, ok := m.Resolve(Outside, netip.AddrPortFrom(testPublic.IPv4, 5060)); ok {
		t.Errorf("resolved a port outside the range")
	}
	m.Release(b, ReasonReleased)
	if _, ok := m.Resolve(Outside, b.Address()); ok || b.Live() {
		t.Errorf("resolved a released binding")
	}
	if !m.Own(Outside, testPublic.IPv4) || m.Own(Inside, testPublic.IPv4) || !m.Own(Inside, netip.MustParseAddr("::ffff:198.18.0.1")) {
		t.Errorf("Own is wrong")
	}
}

func TestSignalExhaustion(t *testing.T) {
	m, f := newTestMap(t, Config{SignalingPorts: PortRange{40000, 40001}})
	a, _ := m.Signaling(Inside, "udp", ap("198.18.0.10:5060"), "c")
	b, _ := m.Signaling(Inside, "udp", ap("198.18.0.11:5060"), "c")
	if _, err := m.Signaling(Inside, "udp", ap("198.18.0.12:5060"), "c"); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("third endpoint in a range of two: %v, want ErrNoPorts", err)
	}
	m.Release(a, ReasonReleased)
	m.Release(b, ReasonReleased)
	assertEmpty(t, m, f)
	if _, err := m.Signaling(Inside, "udp", ap("198.18.0.12:5060"), "c"); err != nil {
		t.Errorf("after release: %v", err)
	}
}

func TestSeparateReserveHooks(t *testing.T) {
	media, sig := newFakeReserve(t), newFakeReserve(t)
	m, _ := newTestMap(t, Config{ReserveMedia: media.reserve, ReserveSignaling: sig.reserve})
	b, err := m.Signaling(Inside, "wss", ap("198.18.0.10:5060"), "c")
	if err != nil {
		t.Fatal(err)
	}
	p := offer(t, m, "c", Inside, "198.18.0.10:3000")
	if !sig.isHeld("tcp", b.Address()) || sig.held() != 1 {
		t.Errorf("signaling hook holds %d ports, want tcp %v", sig.held(), b.Address())
	}
	if !media.isHeld("udp", p.RTP) || media.held() != 2 {
		t.Errorf("media hook holds %d ports, want the pair at %v", media.held(), p.RTP)
	}
}
