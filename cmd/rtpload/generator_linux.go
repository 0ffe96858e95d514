package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pion/rtp"

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// The payload after the 12-byte RTP header: send time, stream index, magic, run.
const (
	offSendTime = 12
	offStream   = 20
	offMagic    = 24
	offRun      = 28
	minPacket   = 32
	magic       = 0x52544c44 // "RTLD"

	batch     = 64
	headroom  = sock.UDPHeaderLen // the UDP header, written in front of the payload
	slotBytes = 2048
	histMax   = 200_000 // latency histogram: 1 us buckets up to 200 ms, then one overflow bucket
	nftTable  = "rtpload"
)

// stream is one direction of a call: from an endpoint to the relay, arriving at the other
// endpoint.
type stream struct {
	src, dst netip.AddrPort
	arrive   netip.AddrPort
	// Built once: src and dst encoded for the UDP header and the raw socket's msg_name, and
	// src as the source of the raw socket's datagram.
	srcAddr, dstAddr sock.Addr
	srcMsg           [sock.SourceSpace]byte
	srcLen           int
}

// newStream returns the stream from src to the relay address dst, arriving at arrive.
func newStream(src, dst, arrive netip.AddrPort) stream {
	s := stream{src: src, dst: dst, arrive: arrive}
	s.srcAddr.Set(src)
	s.dstAddr.Set(dst)
	s.srcLen = sock.Source(&s.srcMsg, src.Addr())
	return s
}

type generator struct {
	o       options
	calls   int
	streams []stream
	raw     [2]int // per family: 0 IPv4, 1 IPv6; -1 unused
	fanIn   [2]int
	nft     bool
	base    time.Time
	runID   uint32 // tells this run's packets from those a relay still queues from an earlier one

	warmupNs         int64
	sent, sendErrors atomic.Uint64 // after the warm-up
	timedSent        atomic.Uint64 // of sampled streams, after the warm-up
	sentAll          atomic.Uint64 // the whole run
	stopRecv         atomic.Bool

	mu          sync.Mutex // guards the receivers' merged results
	hist        []uint64
	received    uint64 // sampled arrivals sent after the warm-up
	onTime      uint64 // of those, arrived within the deadline
	receivedAll uint64 // sampled arrivals of the whole run
	misrouted   uint64
	stale       uint64
}

func fam(a netip.AddrPort) int {
	if a.Addr().Is4() {
		return 0
	}
	return 1
}

// sampled reports whether stream i's arrivals are received in userspace (for latency);
// the others are counted by nftables. Flat-out, streams are timed only when -sample asks.
func (g *generator) sampled(i int) bool {
	return i%g.o.sample == 0 && (!g.o.flat || g.o.sample > 1)
}

func newGenerator(calls []call, o options) (*generator, error) {
	g := &generator{o: o, calls: len(calls), raw: [2]int{-1, -1}, fanIn: [2]int{-1, -1}, hist: make([]uint64, histMax+1)}
	minPort, maxPort := uint16(65535), uint16(0)
	for _, c := range calls {
		g.streams = append(g.streams, newStream(c.a, c.relayA, c.b), newStream(c.b, c.relayB, c.a))
		for _, e := range []netip.AddrPort{c.a, c.b} {
			minPort, maxPort = min(minPort, e.Port()), max(maxPort, e.Port())
		}
	}
	var tport [2]uint16
	var sampledPorts [2][]uint16
	for i, s := range g.streams {
		f := fam(s.src)
		if g.sampled(i) {
			sampledPorts[fam(s.arrive)] = append(sampledPorts[fam(s.arrive)], s.arrive.Port())
		}
		if g.raw[f] >= 0 {
			continue
		}
		var err error
		if g.raw[f], err = openRaw(f == 0); err != nil {
			g.close()
			return nil, err
		}
		if o.flat && o.sample <= 1 {
			continue // nothing timed
		}
		if g.fanIn[f], tport[f], err = openFanIn(f == 0); err != nil {
			g.close()
			return nil, err
		}
	}
	if _, err := sock.RunNft(nftScript(minPort, maxPort, tport, sampledPorts), "-f", "-"); err != nil {
		g.close()
		return nil, err
	}
	g.nft = true
	return g, nil
}

func (g *generator) close() {
	for f := range 2 {
		for _, fd := range []int{g.raw[f], g.fanIn[f]} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}
	if g.nft {
		_, _ = sock.RunNft(fmt.Sprintf("table inet %s\ndelete table inet %s\n", nftTable, nftTable), "-f", "-")
	}
}

// run sends for the warm-up and the measurement, waits for late packets, and reports.
//
// Accounting: the sampled streams' arrivals are received and timed; nftables counts the
// others (zeroed before sending, read at the ends of the warm-up and of the measurement for
// the rate, and after the drain). Loss is over the whole run, every packet sent against
// every arrival, so that no packet in flight at a boundary counts as lost; it counts a packet
// a relay held for seconds as delivered. The late-or-lost share does not: of the timed
// packets sent after the warm-up, those not arrived within the deadline.
func (g *generator) run(ctx context.Context) (result, error) {
	g.base = time.Now()
	g.runID = uint32(g.base.UnixNano()) | 1
	g.warmupNs = int64(g.o.warmup)
	if _, err := readCounter(true); err != nil {
		return result{}, err
	}
	var wg sync.WaitGroup
	for f := range 2 {
		if g.fanIn[f] >= 0 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.receive(g.fanIn[f])
			}()
		}
	}
	var atWarmup, atEnd uint64
	var tWarmup, tEnd time.Time // when the reads happened: a loaded core can delay nft a lot
	var countErr error
	countDone := make(chan struct{})
	go func() {
		defer close(countDone)
		for i, d := range []time.Duration{g.o.warmup, g.o.warmup + g.o.duration} {
			select {
			case <-time.After(time.Until(g.base.Add(d))):
			case <-ctx.Done():
				return
			}
			n, err := readCounter(false)
			if err != nil {
				countErr = err
				return
			}
			// The counter is read at the end of nft's run: starting it (fork, exec) is what
			// takes long on a loaded core, up to seconds.
			at := time.Now()
			if i == 0 {
				atWarmup, tWarmup = n, at
			} else {
				atEnd, tEnd = n, at
			}
		}
	}()
	g.send(ctx)
	<-countDone
	if countErr != nil {
		return result{}, countErr
	}
	select {
	case <-time.After(g.o.drain):
	case <-ctx.Done():
	}
	g.stopRecv.Store(true)
	wg.Wait()
	total, err := readCounter(false)
	if err != nil {
		return result{}, err
	}

	r := result{Calls: g.calls, Streams: len(g.streams), Flat: g.o.flat, Seconds: g.o.duration.Seconds(),
		Sent: g.sentAll.Load(), SendErrors: g.sendErrors.Load(), Received: total + g.receivedAll,
		Misrouted: g.misrouted, Stale: g.stale}
	if r.Sent > r.Received {
		r.Lost = r.Sent - r.Received
	}
	if r.Sent > 0 {
		r.LossPercent = 100 * float64(r.Lost) / float64(r.Sent)
	}
	r.TimedSent, r.OnTime = g.timedSent.Load(), g.onTime
	if r.TimedSent > 0 {
		r.LateOrLostPercent = 100 * float64(r.TimedSent-min(r.OnTime, r.TimedSent)) / float64(r.TimedSent)
	}
	r.SentPPS = float64(g.sent.Load()) / r.Seconds
	r.RecvPPS = float64(g.received) / r.Seconds
	if window := tEnd.Sub(tWarmup).Seconds(); window > 0 {
		r.RecvPPS += float64(atEnd-atWarmup) / window
	}
	r.P50us, r.P99us, r.P999us, r.MaxUs = g.percentile(0.5), g.percentile(0.99), g.percentile(0.999), g.percentile(1)
	return r, nil
}

func (g *generator) percentile(q float64) float64 {
	var total uint64
	for _, n := range g.hist {
		total += n
	}
	if total == 0 {
		return 0
	}
	want := uint64(q * float64(total))
	want = max(want, 1)
	var seen uint64
	for us, n := range g.hist {
		seen += n
		if seen >= want {
			return float64(us)
		}
	}
	return histMax
}

// send emits packet i of the run to stream i mod len(streams) at time i/rate (flat-out
// without a rate: as fast as sendmmsg takes them), in batches of up to 64.
func (g *generator) send(ctx context.Context) {
	n := len(g.streams)
	rate := g.o.pps * float64(n)
	if g.o.rate > 0 {
		rate = g.o.rate
	}
	unlimited := g.o.flat && g.o.rate == 0
	end := g.o.warmup + g.o.duration
	var slots [batch][slotBytes]byte
	var iov [batch]unix.Iovec
	var names [batch]unix.RawSockaddrInet6
	var msgs [batch]unix.Mmsghdr
	var byFam [2][]int
	idx := 0
	for ctx.Err() == nil {
		elapsed := time.Since(g.base)
		if elapsed >= end {
			return
		}
		due := idx + batch
		if !unlimited {
			due = int(elapsed.Seconds()*rate) + 1
			if due <= idx {
				time.Sleep(time.Duration(float64(idx)/rate*float64(time.Second)) - elapsed)
				continue
			}
		}
		for idx < due && time.Since(g.base) < end {
			k := min(due-idx, batch)
			stamp := int64(time.Since(g.base))
			byFam[0], byFam[1] = byFam[0][:0], byFam[1][:0]
			timed := 0
			for j := range k {
				si := (idx + j) % n
				if g.sampled(si) {
					timed++
				}
				s := &g.streams[si]
				seq := uint32((idx + j) / n)
				start := g.build(slots[j][:], s, si, seq, stamp)
				pkt := slots[j][start : headroom+g.o.size]
				iov[j] = unix.Iovec{Base: &pkt[0]}
				iov[j].SetLen(len(pkt))
				var nameLen uint32
				names[j], nameLen = s.dstAddr.RawName()
				msgs[j].Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&names[j])), Namelen: nameLen, Iov: &iov[j], Iovlen: 1,
					Control: &s.srcMsg[0]}
				msgs[j].Hdr.SetControllen(s.srcLen)
				byFam[fam(s.dst)] = append(byFam[fam(s.dst)], j)
			}
			var sent, failed int
			for f := range 2 {
				if len(byFam[f]) == 0 {
					continue
				}
				var group [batch]unix.Mmsghdr
				for i, j := range byFam[f] {
					group[i] = msgs[j]
				}
				s, e := sock.Sendmmsg(g.raw[f], group[:len(byFam[f])], true)
				sent, failed = sent+s, failed+e
			}
			g.sentAll.Add(uint64(sent))
			if stamp >= g.warmupNs {
				g.sent.Add(uint64(sent))
				g.sendErrors.Add(uint64(failed))
				g.timedSent.Add(uint64(timed)) // a refused one among them counts as lost (send_errors says so)
			}
			idx += k
		}
	}
}

// build writes packet seq of stream si into slot and returns where it starts: an RTP header
// (pion/rtp; PCMU, 160 samples a packet, the stream's own SSRC) and the generator's marks.
func (g *generator) build(slot []byte, s *stream, si int, seq uint32, stamp int64) int {
	p := slot[headroom : headroom+g.o.size]
	h := rtp.Header{Version: 2, PayloadType: 0, SequenceNumber: uint16(seq), Timestamp: seq * 160, SSRC: uint32(si + 1)}
	_, _ = h.MarshalTo(p) // p holds at least minPacket bytes (checked at start): never short
	binary.BigEndian.PutUint64(p[offSendTime:], uint64(stamp))
	binary.BigEndian.PutUint32(p[offStream:], uint32(si))
	binary.BigEndian.PutUint32(p[offMagic:], magic)
	binary.BigEndian.PutUint32(p[offRun:], g.runID)
	start := headroom - sock.UDPHeaderLen
	sock.PutUDPHeader(slot[start:headroom+g.o.size], &s.srcAddr, &s.dstAddr)
	return start
}

// receive reads packets from a fan-in socket until told to stop and records their latency.
func (g *generator) receive(fd int) {
	var slots [batch][slotBytes]byte
	var iov [batch]unix.Iovec
	var ctrl [batch][64]byte
	var msgs [batch]unix.Mmsghdr
	hist := make([]uint64, histMax+1)
	var received, receivedAll, onTime, misrouted, stale uint64
	deadline := int64(g.o.deadline)
	for !g.stopRecv.Load() {
		for j := range batch {
			iov[j] = unix.Iovec{Base: &slots[j][0]}
			iov[j].SetLen(slotBytes)
			msgs[j].Hdr = unix.Msghdr{Iov: &iov[j], Iovlen: 1, Control: &ctrl[j][0]}
			msgs[j].Hdr.SetControllen(len(ctrl[j]))
		}
		n, e := sock.Recvmmsg(fd, msgs[:], true)
		if e != 0 {
			continue // the receive timeout: look at the stop flag
		}
		now := int64(time.Since(g.base))
		for j := range n {
			p := slots[j][:msgs[j].Len]
			if len(p) < minPacket || binary.BigEndian.Uint32(p[offMagic:]) != magic {
				misrouted++
				continue
			}
			if binary.BigEndian.Uint32(p[offRun:]) != g.runID {
				stale++
				continue
			}
			si := int(binary.BigEndian.Uint32(p[offStream:]))
			if si >= len(g.streams) || sock.OrigDst(ctrl[j][:msgs[j].Hdr.Controllen]) != g.streams[si].arrive {
				misrouted++
				continue
			}
			receivedAll++
			stamp := int64(binary.BigEndian.Uint64(p[offSendTime:]))
			if stamp < g.warmupNs {
				continue
			}
			received++
			if now-stamp <= deadline {
				onTime++
			}
			us := (now - stamp) / 1000
			hist[min(max(us, 0), histMax)]++
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.received += received
	g.onTime += onTime
	g.receivedAll += receivedAll
	g.misrouted += misrouted
	g.stale += stale
	for i, n := range hist {
		g.hist[i] += n
	}
}

// nftScript returns the rules that deliver the sampled streams' arrival ports to the
// fan-in sockets on tport and count (counter "rx") and drop every other arrival: receiving
// them all in userspace would cost the generator's core as much as the relay spends
// forwarding them.
func nftScript(minPort, maxPort uint16, tport [2]uint16, sampled [2][]uint16) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\ntable inet %s {\n\tcounter rx {}\n", nftTable, nftTable, nftTable)
	b.WriteString("\tchain pre {\n\t\ttype filter hook prerouting priority mangle; policy accept;\n")
	for f, proto := range []string{"ip", "ip6"} {
		if tport[f] == 0 || len(sampled[f]) == 0 {
			continue
		}
		ports := make([]string, len(sampled[f]))
		for i, p := range sampled[f] {
			ports[i] = fmt.Sprint(p)
		}
		fmt.Fprintf(&b, "\t\tmeta nfproto ipv%s udp dport { %s } fib daddr type local tproxy %s to :%d accept\n",
			map[string]string{"ip": "4", "ip6": "6"}[proto], strings.Join(ports, ", "), proto, tport[f])
	}
	fmt.Fprintf(&b, "\t\tudp dport %d-%d fib daddr type local counter name \"rx\" drop\n\t}\n}\n", minPort, maxPort)
	return b.String()
}

// readCounter reads the arrival counter, zeroing it if reset.
func readCounter(reset bool) (uint64, error) {
	verb := "list"
	if reset {
		verb = "reset"
	}
	out, err := sock.RunNft("", verb, "counter", "inet", nftTable, "rx")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(out))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "packets" {
			var n uint64
			if _, err := fmt.Sscan(f[i+1], &n); err != nil {
				return 0, fmt.Errorf("nft counter: %q: %w", out, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("nft counter: no packet count in %q", out)
}
