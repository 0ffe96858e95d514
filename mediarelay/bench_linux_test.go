package mediarelay

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// benchWorker builds a relay's forwarding table with n streams, without sockets, and a worker
// to run the per-packet path on. It returns the (source, relay address) of each stream's leg A.
func benchWorker(b *testing.B, n int) (*worker, [][2]netip.AddrPort) {
	cfg, err := Config{PortMin: 20000, PortMax: 29999, Workers: 1}.withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	r := &Relay{cfg: cfg, log: cfg.Logger, base: time.Now(), ports: make([]portSlot, 10000),
		streams: map[*Stream]struct{}{}, sockets: map[*portSocket]struct{}{}}
	var flows [][2]netip.AddrPort
	for i := range n {
		port := 20000 + 4*i
		spec := StreamSpec{
			CallID: fmt.Sprint("call-", i),
			A: LegSpec{RTP: ap(fmt.Sprintf("198.18.0.1:%d", port)), RTCP: ap(fmt.Sprintf("198.18.0.1:%d", port+1)),
				Peer: ap(fmt.Sprintf("198.18.0.2:%d", 30000+2*i))},
			B: LegSpec{RTP: ap(fmt.Sprintf("198.51.100.1:%d", port+2)), RTCP: ap(fmt.Sprintf("198.51.100.1:%d", port+3)),
				Peer: ap(fmt.Sprintf("198.51.100.2:%d", 30000+2*i))},
		}
		for _, a := range []netip.AddrPort{spec.A.RTP, spec.A.RTCP, spec.B.RTP, spec.B.RTCP} {
			s := &portSocket{fd: -1, idx: r.slot(a), local: a}
			s.localSA.Set(a)
			r.ports[s.idx].sock.Store(s)
		}
		if _, err := r.AddStream(spec); err != nil {
			b.Fatal(err)
		}
		flows = append(flows, [2]netip.AddrPort{spec.A.Peer, spec.A.RTP})
	}
	w := &worker{rx: newRxBatch()}
	w.r, w.c = r, &w.packetCounters
	for i := range batchSize {
		copy(w.rx.slot(i)[headroom:], rtpPacket(uint16(i), uint32(160*i), 0xa, 0))
	}
	return w, flows
}

// BenchmarkPacketPath measures what the relay does per packet between recvmmsg and sendmmsg:
// table lookup, latching, RTP statistics, queueing, and the raw scheme's UDP header with checksum.
func BenchmarkPacketPath(b *testing.B) {
	for _, streams := range []int{1, 1000} {
		b.Run(fmt.Sprint("streams=", streams), func(b *testing.B) {
			w, flows := benchWorker(b, streams)
			w.stamp()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				slot := i % batchSize
				f := flows[i%len(flows)]
				w.handle(slot, 172, 0, f[0], f[1])
				p := &w.pend[w.npnd-1]
				sock.PutUDPHeader(w.rx.slot(slot)[headroom-sock.UDPHeaderLen:headroom+int(p.n)], &p.out.sock.localSA, &p.dst.dst)
				if w.npnd == batchSize {
					w.npnd = 0
				}
			}
		})
	}
}

// BenchmarkRelayRoundTrip sends RTP from the phone through a running relay to the remote
// party, one packet at a time, over real sockets in the lab's namespaces; allocs/op counts
// the whole process, relay included.
func BenchmarkRelayRoundTrip(b *testing.B) {
	for _, m := range relayModes {
		b.Run(m.name, func(b *testing.B) {
			l := newLab(b)
			r := l.newRelay(b, m, Config{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			defer func() { cancel(); <-done }()
			spec := pairSpec(families[0])
			phone := l.listen(b, l.phone, spec.A.Peer.String())
			remote := l.listen(b, l.remote, spec.B.Peer.String())
			addStream(b, r, spec)
			pkt := rtpPacket(1, 0, 0xa, 0)
			buf := make([]byte, 2048)
			remote.conn.SetReadDeadline(time.Now().Add(time.Minute))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				pkt[2], pkt[3] = byte(i>>8), byte(i)
				if _, err := phone.conn.WriteToUDPAddrPort(pkt, spec.A.RTP); err != nil {
					b.Fatal(err)
				}
				if _, _, err := remote.conn.ReadFromUDPAddrPort(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
