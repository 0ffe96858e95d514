// Command rtpload emulates concurrent calls through an RTP relay and measures what the relay
// does to them: packets sent, received and lost, and the forwarding latency (p50, p99,
// p99.9). Each call has two RTP streams, one per direction, of 172-byte packets (G.711,
// 20 ms) at 50 packets/s each, the send time in the payload. A flat-out mode sends as fast as
// it can instead, to find the relay's saturation throughput.
//
// rtpload runs in a network namespace of its own that holds both sides' addresses (the
// benchmark in integration/bench builds it). It sends every stream from one raw socket with
// sendmmsg and receives every stream through one transparent socket that an nftables TPROXY
// rule of its own (table inet rtpload) feeds, so that a few syscalls carry thousands of
// streams. With -sample N it times only every Nth stream, and an nftables counter counts
// (and drops) the others' arrivals; flat-out it times none unless -sample is given. It needs
// root (CAP_NET_ADMIN, CAP_NET_RAW).
//
// The calls come from a file, one per line:
//
//	A-endpoint relay-A B-endpoint relay-B
//	198.18.0.2:30000 198.18.0.1:20000 198.51.100.2:40000 198.51.100.1:20002
//
// A sends to relay-A and expects B's packets from it; B sends to relay-B likewise.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
)

type options struct {
	pairs    string
	calls    int
	duration time.Duration
	warmup   time.Duration
	drain    time.Duration
	deadline time.Duration
	pps      float64 // per stream
	rate     float64 // total; overrides pps
	flat     bool
	sample   int
	size     int
	jsonOut  bool
}

func main() {
	var o options
	flag.StringVar(&o.pairs, "pairs", "", "file of calls: A-endpoint relay-A B-endpoint relay-B per line (required)")
	flag.IntVar(&o.calls, "calls", 0, "number of calls to emulate, from the top of the file (default all)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long to measure, after the warm-up")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "traffic before measuring (latching, caches)")
	flag.DurationVar(&o.drain, "drain", 500*time.Millisecond, "how long to wait for late packets after sending stops")
	flag.DurationVar(&o.deadline, "deadline", 200*time.Millisecond, "a timed packet arriving later than this counts as lost, as a jitter buffer would discard it")
	flag.Float64Var(&o.pps, "pps", 50, "packets per second of each stream")
	flag.Float64Var(&o.rate, "rate", 0, "packets per second of all streams together (overrides -pps)")
	flag.BoolVar(&o.flat, "flat", false, "flat-out: send as fast as possible unless -rate is set, and count arrivals in nftables without timing them unless -sample N > 1 times every Nth stream")
	flag.IntVar(&o.sample, "sample", 1, "time every Nth stream's packets in userspace; nftables counts the others (cheaper for the generator)")
	flag.IntVar(&o.size, "size", 172, "RTP packet size in bytes, header included")
	flag.BoolVar(&o.jsonOut, "json", false, "print the result as one JSON object")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "rtpload:", err)
		os.Exit(1)
	}
}

// call is one emulated call: endpoints A and B and the relay addresses facing each.
type call struct {
	a, relayA, b, relayB netip.AddrPort
}

func readPairs(path string, limit int) ([]call, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read pairs: %w", err)
	}
	defer f.Close()
	var calls []call
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 4 {
			return nil, fmt.Errorf("%s:%d: want 4 addresses, got %d", path, line, len(fields))
		}
		var aps [4]netip.AddrPort
		for i, s := range fields {
			if aps[i], err = netip.ParseAddrPort(s); err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, line, err)
			}
			aps[i] = netip.AddrPortFrom(aps[i].Addr().Unmap(), aps[i].Port())
		}
		if aps[0].Addr().Is4() != aps[1].Addr().Is4() || aps[2].Addr().Is4() != aps[3].Addr().Is4() {
			return nil, fmt.Errorf("%s:%d: an endpoint and its relay address differ in family", path, line)
		}
		calls = append(calls, call{aps[0], aps[1], aps[2], aps[3]})
		if limit > 0 && len(calls) == limit {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read pairs: %w", err)
	}
	if len(calls) == 0 {
		return nil, fmt.Errorf("%s: no calls", path)
	}
	if limit > len(calls) {
		return nil, fmt.Errorf("%s: %d calls, %d asked for", path, len(calls), limit)
	}
	return calls, nil
}

// result is what rtpload reports. Sent, Received and Lost cover the whole run, warm-up
// included; the rates and latencies cover the measurement after the warm-up.
type result struct {
	Calls       int     `json:"calls"`
	Streams     int     `json:"streams"`
	Flat        bool    `json:"flat"`
	Seconds     float64 `json:"seconds"`
	Sent        uint64  `json:"sent"`
	Received    uint64  `json:"received"`
	Lost        uint64  `json:"lost"`
	LossPercent float64 `json:"loss_percent"`
	// Of the timed (sampled) streams' packets sent after the warm-up: how many the kernel took,
	// how many arrived within -deadline, and the share that did not (lost or too late).
	TimedSent         uint64  `json:"timed_sent"`
	OnTime            uint64  `json:"on_time"`
	LateOrLostPercent float64 `json:"late_or_lost_percent"`
	Misrouted         uint64  `json:"misrouted"` // arrived at another stream's endpoint or malformed
	Stale             uint64  `json:"stale"`     // sent by an earlier run, still queued in the relay
	SendErrors        uint64  `json:"send_errors"`
	SentPPS           float64 `json:"sent_pps"`
	RecvPPS           float64 `json:"received_pps"`
	P50us             float64 `json:"p50_us"`
	P99us             float64 `json:"p99_us"`
	P999us            float64 `json:"p999_us"`
	MaxUs             float64 `json:"max_us"`
}

func (r result) String() string {
	return fmt.Sprintf("calls %d (%d streams)%s over %.1fs\n"+
		"sent %d (%.0f/s)  received %d (%.0f/s)  lost %d (%.3f%%)  misrouted %d  stale %d  send errors %d\n"+
		"timed: sent %d  on time %d  late or lost %.3f%%\n"+
		"latency p50 %.0fus  p99 %.0fus  p99.9 %.0fus  max %.0fus\n",
		r.Calls, r.Streams, map[bool]string{true: " flat-out", false: ""}[r.Flat], r.Seconds,
		r.Sent, r.SentPPS, r.Received, r.RecvPPS, r.Lost, r.LossPercent, r.Misrouted, r.Stale, r.SendErrors,
		r.TimedSent, r.OnTime, r.LateOrLostPercent,
		r.P50us, r.P99us, r.P999us, r.MaxUs)
}
