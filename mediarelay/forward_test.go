package mediarelay

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// udpPeer is a phone or a remote party on loopback.
type udpPeer struct {
	t    *testing.T
	conn *net.UDPConn
	addr netip.AddrPort
}

func newUDPPeer(t *testing.T, lo netip.Addr) *udpPeer {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpPeer{t: t, conn: c, addr: netip.AddrPortFrom(lo, c.LocalAddr().(*net.UDPAddr).AddrPort().Port())}
}

func (p *udpPeer) send(to netip.AddrPort, b []byte) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(b, to); err != nil {
		p.t.Fatal(err)
	}
}

// expect waits for the next datagram and checks it is want, from from.
func (p *udpPeer) expect(want []byte, from netip.AddrPort) {
	p.t.Helper()
	buf := make([]byte, 2048)
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, src, err := p.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		p.t.Fatalf("%v: waiting for a packet from %v: %v", p.addr, from, err)
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if !bytes.Equal(buf[:n], want) || src != from {
		p.t.Fatalf("%v got % x from %v, want % x from %v", p.addr, buf[:min(n, 16)], src, want[:min(len(want), 16)], from)
	}
}

// TestFallbackForwards: the per-port mode, which every platform has, relays RTP and RTCP both
// ways between two peers on loopback, latches on them, drops what another source sends (RTP
// bleed), counts, analyses quality, and frees its ports when it stops.
func TestFallbackForwards(t *testing.T) {
	for _, lo := range []string{"127.0.0.1", "::1"} {
		t.Run(lo, func(t *testing.T) {
			isolate(t)
			addr := netip.MustParseAddr(lo)
			if c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0))); err != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("no %s: %v", lo, err)
				}
				t.Skipf("no %s: %v", lo, err)
			} else {
				c.Close()
			}
			phone, remote, stranger := newUDPPeer(t, addr), newUDPPeer(t, addr), newUDPPeer(t, addr)
			r, err := New(Config{PortMin: 41000, PortMax: 41099, Mode: ModeFallback, Workers: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			at := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(addr, port) }
			spec := StreamSpec{
				CallID: "loopback",
				A:      LegSpec{RTP: at(41000), RTCP: at(41001), Peer: phone.addr, PeerRTCP: phone.addr},
				B:      LegSpec{RTP: at(41002), RTCP: at(41003), Peer: remote.addr, PeerRTCP: remote.addr},
			}
			for _, a := range []netip.AddrPort{spec.A.RTP, spec.A.RTCP, spec.B.RTP, spec.B.RTCP} {
				if _, err := r.Reserve("udp", a); err != nil { // left open: Close closes them
					t.Fatal(err)
				}
			}
			s, err := r.AddStream(spec)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()

			out := rtpPacket(1, 160, 0xa, 1)
			phone.send(spec.A.RTP, out)
			remote.expect(out, spec.B.RTP)
			back := rtpPacket(1, 160, 0xb, 2)
			remote.send(spec.B.RTP, back)
			phone.expect(back, spec.A.RTP)
			rtcp := rtcpPacket(0xa, 3)
			phone.send(spec.A.RTCP, rtcp)
			remote.expect(rtcp, spec.B.RTCP)
			// Latched on the phone: another source's packets go nowhere, the phone's still do.
			stranger.send(spec.A.RTP, rtpPacket(9, 0, 0xdead, 4))
			next := rtpPacket(2, 320, 0xa, 5)
			phone.send(spec.A.RTP, next)
			remote.expect(next, spec.B.RTP)

			st := s.Stats()
			if st.A.Peer != phone.addr || st.B.Peer != remote.addr || st.A.RTP.Packets != 2 || st.A.RTCP.Packets != 1 || st.A.Bleed != 1 {
				t.Errorf("stats: A peer %v, %d RTP, %d RTCP, %d bleed; B peer %v; want %v, 2, 1, 1; %v",
					st.A.Peer, st.A.RTP.Packets, st.A.RTCP.Packets, st.A.Bleed, st.B.Peer, phone.addr, remote.addr)
			}
			// Quality analysis runs on the same path: the phone's two RTP packets, in sequence.
			if q := s.Quality().A; q.Expected != 2 || q.Lost != 0 || q.SSRC != 0xa || q.CodecPT != 0 {
				t.Errorf("quality of leg A: %d expected, %d lost, SSRC %#x, codec %d; want 2, 0, 0xa, 0",
					q.Expected, q.Lost, q.SSRC, q.CodecPT)
			}
			c := r.Counters()
			if c.Forwarded != 4 || c.Dropped[DropBleed] != 1 || c.Received[PathPerPort] != 5 || c.Received[PathFanIn] != 0 {
				t.Errorf("counters %+v, want 4 forwarded, 1 bleed, 5 received per port", c)
			}
			if r.FanIn() {
				t.Error("FanIn in fallback mode")
			}

			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			for _, a := range []netip.AddrPort{spec.A.RTP, spec.A.RTCP, spec.B.RTP, spec.B.RTCP} {
				c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
				if err != nil {
					t.Errorf("relay port %v still held after Run returned: %v", a, err)
					continue
				}
				c.Close()
			}
			if _, err := r.Reserve("udp", at(41004)); err == nil {
				t.Error("Reserve after Close succeeded")
			}
		})
	}
}
