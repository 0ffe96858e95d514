package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/pinhole/replica"
)

// BenchmarkCallsReplication is the cost of replication to the relay: calls per second (INVITE
// with SDP, 200 with SDP, ACK, BYE, 200: pairs allocated and released) through a relay without
// replication and through one that writes every change to a Redis of its own on loopback
// (redis-server), in one run, rounds of calls alternating between the two so that the machine's
// other load falls on both alike; and the Redis operations per call: the relay's round trips
// (script calls, a batch each) and the commands Redis ran (INFO commandstats, the script's own
// included). Metrics: calls/s-off, calls/s-on, on/off (target at least 0.9), round-trips/call,
// redis-cmds/call; and the CPU a call costs each way (cpu-us/call-off, cpu-us/call-on,
// redis-cpu-us/call) with its ratio (cpu-on/off, calls per CPU second on against off), which the
// machine's other load bends less than calls/s.
func BenchmarkCallsReplication(b *testing.B) {
	rs := startBenchRedis(b)
	const callers, callsPerRound = 16, 100
	off := newBenchBed(b, nil, 35000, 37000)
	reg := prometheus.NewRegistry()
	client, err := replica.Open(replica.Config{URL: rs.url(), Registerer: reg, ID: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	fol := client.NewFollower()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = fol.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for fol.Current() != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	snap, err := fol.Takeover(ctx, false)
	if err != nil {
		b.Fatal(err)
	}
	w := client.NewWriter(snap.Term)
	on := newBenchBed(b, w, 39000, 41000)
	go func() { _ = w.Run(ctx, on.r) }()
	rdb := redis.NewClient(&redis.Options{Addr: strings.TrimPrefix(rs.url(), "redis://")})
	defer rdb.Close()

	var tOff, tOn time.Duration
	var nOff, nOn int
	var trips, cmds float64
	b.ResetTimer()
	// One round of calls through a relay, then a pause that lets the writer write the round's
	// last batches (and lets the machine's other load settle alike after either relay).
	// The CPU time a round costs, this process's and Redis's, is the figure the machine's other
	// load does not bend: calls/s on a loaded machine measure scheduling as much as sipcar.
	var cpuOff, cpuOn, cpuRedis time.Duration
	round := func(bed *benchBed, cpu *time.Duration) time.Duration {
		c0, r0 := processCPU(), rs.cpu()
		d, err := bed.calls(callers, callsPerRound)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		time.Sleep(300 * time.Millisecond)
		*cpu += processCPU() - c0
		if bed == on {
			cpuRedis += rs.cpu() - r0
		}
		b.StartTimer()
		return d
	}
	for i := range b.N {
		// Which goes first alternates: a round is measured under the same load as its twin.
		if i%2 == 0 {
			tOff += round(off, &cpuOff)
		}
		t0, c0 := counter(b, reg, "sipcar_replica_redis_round_trips_total"), redisCommands(b, rdb)
		tOn += round(on, &cpuOn)
		trips += counter(b, reg, "sipcar_replica_redis_round_trips_total") - t0
		cmds += redisCommands(b, rdb) - c0 - 1 // INFO itself
		if i%2 == 1 {
			tOff += round(off, &cpuOff)
		}
		nOff += callsPerRound
		nOn += callsPerRound
	}
	b.ReportMetric(float64(cpuOff.Microseconds())/float64(nOff), "cpu-us/call-off")
	b.ReportMetric(float64(cpuOn.Microseconds())/float64(nOn), "cpu-us/call-on")
	b.ReportMetric(float64(cpuRedis.Microseconds())/float64(nOn), "redis-cpu-us/call")
	// What a CPU-bound sipcar would do with replication on, against off: the CPU a call costs,
	// Redis's included.
	b.ReportMetric((float64(cpuOff)/float64(nOff))/(float64(cpuOn+cpuRedis)/float64(nOn)), "cpu-on/off")
	b.StopTimer()
	offRate, onRate := float64(nOff)/tOff.Seconds(), float64(nOn)/tOn.Seconds()
	b.ReportMetric(offRate, "calls/s-off")
	b.ReportMetric(onRate, "calls/s-on")
	b.ReportMetric(onRate/offRate, "on/off")
	b.ReportMetric(trips/float64(nOn), "round-trips/call")
	b.ReportMetric(cmds/float64(nOn), "redis-cmds/call")
	if keys, err := rdb.Keys(context.Background(), "{sipcar}:r:call:*").Result(); err == nil && len(keys) != 0 {
		b.Errorf("%d call records left in Redis after every call ended", len(keys))
	}
}

// benchBed is a relay on loopback with a PBX that answers every INVITE and BYE by itself.
type benchBed struct {
	r   *Relay
	sip netip.AddrPort
	pbx *net.UDPConn
}

func newBenchBed(b *testing.B, rep Replicator, mediaFirst, sigFirst uint16) *benchBed {
	b.Helper()
	pbx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pbx.Close() })
	sipConn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	sipAddr := sipConn.LocalAddr().(*net.UDPAddr).AddrPort()
	sipConn.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	cfg := Config{
		Mode: Upstream, Upstream: addrOf(pbx), InsideNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
		ListenUDP: sipAddr, Replica: rep, MaxErrorReplyRate: -1,
		Map: pinhole.Config{Inside: pinhole.Addrs{IPv4: lo}, Public: pinhole.Addrs{IPv4: lo},
			MediaPorts:        pinhole.PortRange{First: mediaFirst, Last: mediaFirst + 1999},
			SignalingPorts:    pinhole.PortRange{First: sigFirst, Last: sigFirst + 1999},
			MaxCallsPerSource: -1, MaxPortsPerSource: -1, MaxBindingsPerSource: -1},
		Media: mediarelay.Config{Mode: mediarelay.ModeFallback},
	}
	r, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	for !r.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
	go answerAll(pbx)
	return &benchBed{r: r, sip: sipAddr, pbx: pbx}
}

// answerAll answers every INVITE with a 200 with SDP and every BYE with a 200, until pbx closes.
func answerAll(pbx *net.UDPConn) {
	buf := make([]byte, 65535)
	media := addrOf(pbx).Addr().String()
	for {
		n, src, err := pbx.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		msg := string(buf[:n])
		method, _, _ := strings.Cut(msg, " ")
		var extra, body string
		switch method {
		case "INVITE":
			extra = "Contact: <sip:100@" + addrOf(pbx).String() + ">\r\n"
			body = sdp(media, 4000)
		case "BYE":
		default:
			continue
		}
		var head strings.Builder
		head.WriteString("SIP/2.0 200 OK\r\n")
		for _, l := range strings.Split(msg, "\r\n") {
			name, _, _ := strings.Cut(l, ":")
			switch strings.ToLower(name) {
			case "via", "from", "call-id", "cseq":
				head.WriteString(l + "\r\n")
			case "to":
				head.WriteString(l + ";tag=pbx\r\n")
			}
			if l == "" {
				break
			}
		}
		head.WriteString(extra)
		out := head.String()
		if body != "" {
			body = strings.ReplaceAll(body, "\n", "\r\n")
			out += fmt.Sprintf("Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		} else {
			out += "Content-Length: 0\r\n\r\n"
		}
		_, _ = pbx.WriteToUDPAddrPort([]byte(out), src)
	}
}

var benchCallSeq atomic.Int64

// calls runs n calls from callers phones at once and returns how long they took.
func (bb *benchBed) calls(callers, n int) (time.Duration, error) {
	var left atomic.Int64
	left.Store(int64(n))
	errc := make(chan error, callers)
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			phone, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)})
			if err != nil {
				errc <- err
				return
			}
			defer phone.Close()
			for left.Add(-1) >= 0 {
				if err := bb.call(phone, fmt.Sprintf("bench%d", benchCallSeq.Add(1))); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errc)
	return d, <-errc
}

// call makes one call from phone: INVITE, 200, ACK, BYE, 200.
func (bb *benchBed) call(phone *net.UDPConn, id string) error {
	me := addrOf(phone)
	send := func(msg string) error {
		_, err := phone.WriteToUDPAddrPort([]byte(strings.ReplaceAll(msg, "\n", "\r\n")), bb.sip)
		return err
	}
	await := func(method string) error {
		buf := make([]byte, 65535)
		_ = phone.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			n, _, err := phone.ReadFromUDPAddrPort(buf)
			if err != nil {
				return fmt.Errorf("call %s: no 200 to %s: %w", id, method, err)
			}
			m := string(buf[:n])
			if strings.HasPrefix(m, "SIP/2.0 200") && strings.Contains(m, "Call-ID: "+id+"\r\n") && strings.Contains(m, " "+method+"\r\n") {
				return nil
			}
		}
	}
	head := func(method string, cseq int, to string) string {
		return fmt.Sprintf("%s sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%s%s\nFrom: <sip:200@127.0.0.1>;tag=%s\n"+
			"To: <sip:100@127.0.0.1>%s\nCall-ID: %s\nCSeq: %d %s\nMax-Forwards: 70\n", method, bb.sip.Port(), me, id, method, id, to, id, cseq, method)
	}
	if err := send(withBody(head("INVITE", 1, ""), sdp("127.0.0.3", 4000))); err != nil {
		return err
	}
	if err := await("INVITE"); err != nil {
		return err
	}
	if err := send(head("ACK", 1, ";tag=pbx") + "Content-Length: 0\n\n"); err != nil {
		return err
	}
	if err := send(head("BYE", 2, ";tag=pbx") + "Content-Length: 0\n\n"); err != nil {
		return err
	}
	return await("BYE")
}

// counter reads a counter from reg.
func counter(b *testing.B, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return sumCounter(mf.GetMetric())
		}
	}
	return 0
}

func sumCounter(ms []*dto.Metric) float64 {
	v := 0.0
	for _, m := range ms {
		v += m.GetCounter().GetValue()
	}
	return v
}

// redisCommands returns how many commands Redis ran, by INFO commandstats.
func redisCommands(b *testing.B, rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	total := 0.0
	for _, l := range strings.Split(info, "\n") {
		if !strings.HasPrefix(l, "cmdstat_") {
			continue
		}
		_, stats, _ := strings.Cut(l, ":")
		for _, kv := range strings.Split(stats, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseFloat(v, 64)
				total += n
			}
		}
	}
	return total
}

// processCPU returns the CPU time this process used so far (user and system): the relay, the
// phones and the PBX of the benchmark.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchRedis is a redis-server on loopback for the benchmark.
type benchRedis struct {
	port int
	pid  int
}

// cpu returns the CPU time redis-server used so far, from /proc.
func (r benchRedis) cpu() time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(r.pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

func (r benchRedis) url() string { return "redis://127.0.0.1:" + strconv.Itoa(r.port) }

func startBenchRedis(b *testing.B) benchRedis {
	b.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatal("prerequisite missing (CI=true): redis-server")
		}
		b.Skip("prerequisite missing: redis-server (Debian package redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := b.TempDir()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			c.Close()
			return benchRedis{port: port, pid: cmd.Process.Pid}
		}
		if time.Now().After(deadline) {
			b.Fatal("redis-server does not listen")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
