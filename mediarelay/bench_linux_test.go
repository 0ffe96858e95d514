package mediarelay

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// benchWorker builds a relay's forwarding table with n streams, without sockets, and a worker
// to run the per-packet path on. It returns the (source, relay address) of each stream's leg A.
func benchWorker(b testing.TB, n int, noQuality bool) (*worker, [][2]netip.AddrPort) {
	cfg, err := Config{PortMin: 20000, PortMax: 29999, Workers: 1, NoQuality: noQuality}.withDefaults()
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
			PayloadTypes: []PayloadType{{0, "PCMU", 8000}, {101, "telephone-event", 8000}},
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

// TestPacketPathAllocatesNothing runs RTP and RTCP (a compound SR, a compound RR naming it)
// through the per-packet path with quality analysis on and a Config.RTCP subscriber: no
// allocation per packet.
func TestPacketPathAllocatesNothing(t *testing.T) {
	w, flows := benchWorker(t, 1, false)
	var got int
	w.r.cfg.RTCP = func(p *RTCPPacket) { got += len(p.Data) }
	w.stamp()
	s := w.r.Streams()[0]
	rtcpA, rtcpB := s.eps[epIndex(LegA, true)], s.eps[epIndex(LegB, true)]
	sr := compound(t, &rtcp.SenderReport{SSRC: 0xb, NTPTime: 1 << 40, Reports: []rtcp.ReceptionReport{{SSRC: 0xa}}}, sdes(0xb))
	rr := compound(t, &rtcp.ReceiverReport{SSRC: 0xa, Reports: []rtcp.ReceptionReport{{SSRC: 0xb, LastSenderReport: 1 << 24}}}, sdes(0xa))
	copy(w.rx.slot(1)[headroom:], sr)
	copy(w.rx.slot(2)[headroom:], rr)
	seq := uint16(0)
	run := func() {
		binary.BigEndian.PutUint16(w.rx.slot(0)[headroom+2:], seq)
		seq++
		w.handle(0, 172, 0, flows[0][0], flows[0][1])
		w.handle(1, len(sr), 0, rtcpB.peer.Load().sdp, rtcpB.local)
		w.handle(2, len(rr), 0, rtcpA.peer.Load().sdp, rtcpA.local)
		w.npnd = 0
	}
	run() // latches, and makes the worker's RTCP reader
	if n := testing.AllocsPerRun(1000, run); n != 0 {
		t.Errorf("%v allocations per RTP packet and two RTCP packets, want 0", n)
	}
	if q := s.Quality(); q.A.Remote == nil || q.A.Remote.Reports < 1000 || q.A.Expected < 1000 || got == 0 {
		t.Errorf("quality %+v, %d RTCP bytes to the subscriber: the packets were not analysed", q.A, got)
	}
}

// BenchmarkPacketPath measures what the relay does per packet between recvmmsg and sendmmsg:
// table lookup, latching, RTP statistics, queueing, and the raw scheme's UDP header with checksum.
// Two workers take turns batch by batch (so that what drifts on a shared machine weighs on
// both alike), one with quality analysis off, which counts packets and bytes only, and one
// with it on, which reads and tracks the RTP header too (sequence, loss, duplicates, jitter,
// payload types); on-% is what quality analysis adds. Each stream's packets come in sequence,
// 20 ms apart on the RTP clock.
func BenchmarkPacketPath(b *testing.B) {
	for _, streams := range []int{1, 1000} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			var workers [2]*worker // off, on
			var flows [2][][2]netip.AddrPort
			var cpu [2]int64
			for i, noQuality := range []bool{true, false} {
				workers[i], flows[i] = benchWorker(b, streams, noQuality)
				workers[i].stamp()
			}
			// On a machine others share, wall time counts the time the benchmark waits for a
			// CPU; the thread's own CPU time does not: reported as cpu-ns/op.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.ReportAllocs()
			b.ResetTimer()
			// The turns are 16 batches long: reading a thread's CPU time is a system call, here
			// under 1 ns per packet.
			const turn = 16 * batchSize
			for start := 0; start < b.N; start += turn {
				end := min(start+turn, b.N)
				for q, w := range workers {
					cpu0 := threadCPU(b)
					for i := start; i < end; i++ {
						slot := i % batchSize
						f := flows[q][i%streams]
						seq := uint32(i / streams)
						pkt := w.rx.slot(slot)[headroom:]
						binary.BigEndian.PutUint16(pkt[2:], uint16(seq))
						binary.BigEndian.PutUint32(pkt[4:], 160*seq)
						w.handle(slot, 172, 0, f[0], f[1])
						p := &w.pend[w.npnd-1]
						sock.PutUDPHeader(w.rx.slot(slot)[headroom-sock.UDPHeaderLen:headroom+int(p.n)], &p.out.sock.localSA, &p.dst.dst)
						if w.npnd == batchSize {
							w.npnd = 0
						}
					}
					w.npnd = 0
					cpu[q] += threadCPU(b) - cpu0
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpu[0])/float64(b.N), "off-cpu-ns/op")
			b.ReportMetric(float64(cpu[1])/float64(b.N), "on-cpu-ns/op")
			b.ReportMetric(100*(float64(cpu[1])/float64(cpu[0])-1), "on-%")
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

// threadCPU is the CPU time the calling thread used, in nanoseconds.
func threadCPU(b *testing.B) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return ts.Nano()
}

// BenchmarkMediaPath measures the whole media path per packet, system calls included: a
// fan-in relay's worker reads a batch from its socket (recvmmsg), forwards it and sends it
// (sendmmsg on its raw socket), here on the benchmark's own thread, whose CPU time is counted
// during those steps only. Before each batch the phone sends it (one RTP packet per stream in
// turn, each stream's in sequence, 20 ms apart on its clock) and after it the remote party
// reads what arrived; neither is counted. Two relays run side by side, one with call-quality
// analysis and one without, taking turns batch by batch, so that what drifts on a shared
// machine weighs on both alike: on-% is what quality analysis adds to a packet's cost in the
// path as it runs, where BenchmarkPacketPath leaves the system calls out.
func BenchmarkMediaPath(b *testing.B) {
	for _, streams := range []int{1, 256} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			off, on := newPathRig(b, streams, true), newPathRig(b, streams, false)
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.ReportAllocs()
			b.ResetTimer()
			for sent := 0; sent < b.N; sent += batchSize {
				n := min(batchSize, b.N-sent)
				off.batch(b, n)
				on.batch(b, n)
			}
			b.StopTimer()
			for _, rig := range []*pathRig{off, on} {
				if rig.forwarded != b.N || rig.sent != b.N {
					b.Fatalf("forwarded %d of %d packets, want %d", rig.forwarded, rig.sent, b.N)
				}
			}
			b.ReportMetric(float64(off.cpu)/float64(b.N), "off-cpu-ns/op")
			b.ReportMetric(float64(on.cpu)/float64(b.N), "on-cpu-ns/op")
			b.ReportMetric(100*(float64(on.cpu)/float64(off.cpu)-1), "on-%")
		})
	}
}

// pathRig is a relay in a lab of its own with streams streams, a phone sending RTP to each and
// a remote party receiving it, for BenchmarkMediaPath.
type pathRig struct {
	w          *worker
	fd         int
	phone      *peer
	remote     *peer
	relayPorts []netip.AddrPort
	pkt, buf   []byte

	sent, forwarded int
	cpu             int64 // the worker's, in nanoseconds
}

func newPathRig(b *testing.B, streams int, noQuality bool) *pathRig {
	l := newLab(b)
	f := families[0]
	r := l.newRelay(b, relayModes[0], Config{PortMin: 20000, PortMax: uint16(20000 + 4*streams - 1), NoQuality: noQuality})
	rig := &pathRig{w: r.workers[0], fd: r.workers[0].fanIn[0], pkt: rtpPacket(0, 0, 0xa, 0), buf: make([]byte, 2048),
		phone: l.listen(b, l.phone, f.at(f.phone, 30000).String()), remote: l.listen(b, l.remote, f.at(f.remote, 40000).String())}
	for i := range streams {
		spec := StreamSpec{
			CallID:       fmt.Sprint("call-", i),
			A:            LegSpec{RTP: f.at(f.sipcarIn, 20000+4*i), RTCP: f.at(f.sipcarIn, 20001+4*i), Peer: rig.phone.addr},
			B:            LegSpec{RTP: f.at(f.sipcarOut, 20002+4*i), RTCP: f.at(f.sipcarOut, 20003+4*i), Peer: rig.remote.addr},
			PayloadTypes: []PayloadType{{0, "PCMU", 8000}},
		}
		addStream(b, r, spec)
		rig.relayPorts = append(rig.relayPorts, spec.A.RTP)
	}
	rig.remote.conn.SetReadDeadline(time.Now().Add(time.Hour))
	return rig
}

// batch sends n packets from the phone, relays them, counting the worker's CPU time, and
// receives them at the remote party.
func (rig *pathRig) batch(b *testing.B, n int) {
	w, streams := rig.w, len(rig.relayPorts)
	for j := range n {
		k := rig.sent + j
		seq := uint32(k / streams)
		binary.BigEndian.PutUint16(rig.pkt[2:], uint16(seq))
		binary.BigEndian.PutUint32(rig.pkt[4:], 160*seq)
		if _, err := rig.phone.conn.WriteToUDPAddrPort(rig.pkt, rig.relayPorts[k%streams]); err != nil {
			b.Fatal(err)
		}
	}
	rig.sent += n
	// The phone's sends went through the veth into the relay's socket before they returned
	// (the receive runs in the sender's softirq); a read that finds less reads again, for a
	// while: packets lost on the way fail the benchmark rather than hang it.
	before := w.queued.Load()
	for got, reads := 0, 0; got < n; reads++ {
		if reads == 1000 {
			b.Fatalf("the relay's socket had %d of %d packets after %d reads", got, n, reads)
		}
		cpu0 := threadCPU(b)
		w.stamp()
		rx := w.rxFanIn.Load()
		w.readFanIn(rig.fd)
		w.flush()
		rig.cpu += threadCPU(b) - cpu0
		got += int(w.rxFanIn.Load() - rx)
	}
	queued := int(w.queued.Load() - before)
	for range queued {
		if _, _, err := rig.remote.conn.ReadFromUDPAddrPort(rig.buf); err != nil {
			b.Fatal(err)
		}
	}
	rig.forwarded += queued
}
