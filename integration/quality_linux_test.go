package integration

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCallQuality makes two calls between real softphones (baresip, G.711, RTCP on) through
// sipcar, the outside phone's media crossing a router that impairs it: the first call clean,
// the second with 5% random loss and a delay drawn uniformly from 10-30 ms on each RTP packet
// (RTCP only delayed). It checks what sipcar measured on the leg from that phone against what
// was applied:
//
//   - loss: the fraction sipcar counted from sequence numbers, against the impairer's own count
//     of what it dropped (within 0.5 points; the first and last packets of the call are the
//     difference) and against the 5% applied (within 2.5 points: a random draw);
//   - jitter: the mean over the call of sipcar's RFC 3550 estimate, against the same computed
//     by the impairer over the packets as it sent them on (within 1.5 ms or 20%), which holds
//     both the delays applied and the phone's own send timing (baresip's packets leave up to
//     ten or more ms off their clock on a loaded machine); and against the applied delay alone,
//     whose mean difference of consecutive transit times, 2J/3 = 6.7 ms for a uniform delay of
//     width 2J = 20 ms, is a lower bound (at least 6 ms);
//   - round trip: from the phone's RTCP reports naming the sender reports sipcar relayed to it,
//     at least the 10 ms by which the impairer delays every report on its way back (9 ms for
//     DLSR's rounding; the phone's own scheduling on a loaded machine adds tens of ms, as the
//     unimpaired inside phone's round trip shows in the log);
//   - MOS: lower than the clean call's, which scores at least 4.3;
//
// in the session table (JSON and `sipcar show sessions`) mid-call, and in the Prometheus
// histograms observed when each call ended. The inside phone's leg stays clean in both calls.
//
// The kernel here has no netem (CONFIG_NET_SCH_NETEM is off), so the test impairs the media
// itself, as netem would on the phone's link: a router namespace between the phone and sipcar
// steers the phone's UDP to sipcar's relay ports (nftables TPROXY) to the test, which drops
// and delays each packet and sends it on with the phone's own source address.
func TestCallQuality(t *testing.T) {
	t.Parallel()
	bin := needProgram(t, "baresip", "baresip-core")
	needProgram(t, "nft", "nftables")
	l, imp := newImpairedLab(newTestbed(t))

	l.startKamailio(l.pbx)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	desk := l.startBaresip(bin, l.pbx, "desk", baresipPhone{
		sipListen: hostPort(pbxAddr, 5070), account: "<sip:bob@198.18.0.10>;regint=300;answermode=auto;audio_codecs=pcmu",
		rtpPorts: "31000-31010", toneHz: 660,
	})
	desk.waitRegistered(t, "bob@198.18.0.10")
	phone := l.startBaresip(bin, l.phone, "phone", baresipPhone{
		sipListen: hostPort(impairedPhone, 5060), account: "<sip:alice@198.51.100.1>;regint=300;audio_codecs=pcmu",
		rtpPorts: "21000-21010", toneHz: 440,
	})
	phone.waitRegistered(t, "alice@198.51.100.1")

	// call places a call from the phone, lets sipcar relay packets RTP packets from it (50 a
	// second) until ready says the session table shows enough, hangs up, and returns what the
	// session table said last and what the histograms observed for each side at the call's end.
	call := func(name string, packets uint64, ready func(out, in legQuality) bool) (outside, inside legQuality, ended map[string]legEnd) {
		t.Helper()
		before := car.metrics(t)
		phone.command(t, "dial", "sip:bob@198.51.100.1")
		phone.waitEvent(t, "CALL_ESTABLISHED", 20*time.Second)
		eventually(t, 60*time.Second, name+": the outside leg's quality after "+fmt.Sprint(packets)+" RTP packets", func() (bool, string) {
			var ok bool
			var state string
			outside, inside, ok, state = car.legQualities()
			return ok && outside.Expected >= packets && inside.Expected > 0 && (ready == nil || ready(outside, inside)), state
		})
		text := car.showSessions(t)
		phone.command(t, "hangup", "")
		phone.waitEvent(t, "CALL_CLOSED", 10*time.Second)
		desk.waitEvent(t, "CALL_CLOSED", 10*time.Second)
		car.waitNoMedia(t, "BYE")
		ended = histogramDelta(before, car.metrics(t))
		t.Logf("%s: outside leg %+v (rtt %s ms)\ninside leg %+v (rtt %s ms)\nhistograms at the end: %+v\nsipcar show sessions:\n%s", name, outside, fmtMs(outside.RTTMs), inside, fmtMs(inside.RTTMs), ended, text)
		if !strings.Contains(text, "mos ") || !strings.Contains(text, "loss ") {
			t.Errorf("%s: sipcar show sessions shows no quality:\n%s", name, text)
		}
		for _, side := range []string{"inside", "outside"} {
			if ended[side].count != 1 {
				t.Errorf("%s: %v %s legs observed in the histograms at the call's end, want 1", name, ended[side].count, side)
			}
		}
		desk.clearEvents()
		phone.clearEvents()
		return outside, inside, ended
	}

	cleanOut, cleanIn, cleanEnd := call("clean call", 250, nil)
	for _, q := range []legQuality{cleanOut, cleanIn} {
		if q.Lost != 0 || q.MOS < 4.3 || q.Codec != "PCMU" {
			t.Errorf("clean call: leg from %v lost %d, MOS %.2f, codec %q; want none lost, MOS >= 4.3, PCMU", q.Peer, q.Lost, q.MOS, q.Codec)
		}
	}

	imp.set(0.05, 10*time.Millisecond, 30*time.Millisecond)
	// Long enough for RTCP to time a round trip (baresip reports every 5 s or so).
	out, in, end := call("impaired call", 750, func(out, _ legQuality) bool { return out.RTTMs != nil })
	applied := imp.counts()
	t.Logf("impairer: %d RTP packets from the phone, %d dropped (%.2f%%); %d RTCP delayed; mean RFC 3550 jitter of the RTP as it came %.1f ms, as it went on %.1f ms",
		applied.rtp, applied.dropped, 100*applied.lossRatio(), applied.rtcp, applied.jitterIn.mean(), applied.jitterOut.mean())

	loss := end["outside"].loss
	if d := 100 * (loss - applied.lossRatio()); d < -0.5 || d > 0.5 {
		t.Errorf("sipcar measured %.2f%% lost on the impaired leg at the call's end; the impairer dropped %.2f%%: want within 0.5 points",
			100*loss, 100*applied.lossRatio())
	}
	if loss < 0.025 || loss > 0.075 {
		t.Errorf("sipcar measured %.2f%% lost on the impaired leg; 5%% applied: want 2.5-7.5%%", 100*loss)
	}
	j, want := 1000*end["outside"].jitter, applied.jitterOut.mean()
	if d := j - want; d < -max(1.5, want/5) || d > max(1.5, want/5) {
		t.Errorf("sipcar's mean jitter on the impaired leg %.1f ms; the impairer's of what it sent %.1f ms: want within 1.5 ms or 20%%", j, want)
	}
	if j < 6 {
		t.Errorf("sipcar's mean jitter on the impaired leg %.1f ms; a uniform 10-30 ms delay alone gives 6.7 ms: want at least 6 ms", j)
	}
	if out.RTTMs == nil || *out.RTTMs < 9 || *out.RTTMs > 500 {
		t.Errorf("round trip to the impaired phone %s ms; its reports are delayed 10-30 ms: want at least 9 ms (and below 500)", fmtMs(out.RTTMs))
	}
	if out.Remote == nil || out.Remote.Reports == 0 {
		t.Errorf("no RTCP report from the impaired phone read: %+v", out.Remote)
	}
	if end["outside"].mos > cleanEnd["outside"].mos-0.2 || out.MOS > cleanOut.MOS-0.2 {
		t.Errorf("impaired leg's MOS %.2f (mid-call %.2f); clean call's %.2f (%.2f): want it lower by at least 0.2",
			end["outside"].mos, out.MOS, cleanEnd["outside"].mos, cleanOut.MOS)
	}
	if in.Lost != 0 || end["inside"].loss != 0 || in.MOS < 4.3 {
		t.Errorf("the inside phone's leg, not impaired, lost %d (%.2f%% at the end), MOS %.2f; want none lost, MOS >= 4.3",
			in.Lost, 100*end["inside"].loss, in.MOS)
	}
}

// impairedPhone is the outside phone's address in the impaired lab: on a network of its own
// behind the router that impairs its media.
var impairedPhone = netip.MustParseAddr("203.0.113.20")

// newImpairedLab builds the sidecar topology with a router between the phone and sipcar that
// hands the phone's UDP to sipcar's relay ports to an impairer:
//
//	phone 203.0.113.20 eth0 == mp0 203.0.113.1 router 198.51.100.2 mc0 == out0 198.51.100.1 car in0 198.18.0.1 == eth0 198.18.0.10 pbx
func newImpairedLab(tb *testbed) (*upstreamLab, *impairer) {
	tb.t.Helper()
	l := &upstreamLab{testbed: tb, phone: tb.host("phone"), car: tb.host("car"), pbx: tb.host("pbx"), plan: plan4}
	router := tb.host("router")
	tb.link(end{l.phone, "eth0", []string{"203.0.113.20/24"}}, end{router, "mp0", []string{"203.0.113.1/24"}})
	tb.link(end{router, "mc0", []string{"198.51.100.2/24"}}, end{l.car, "out0", []string{plan4.cidr(plan4.public)}})
	tb.link(end{l.car, "in0", []string{plan4.cidr(plan4.inside)}}, end{l.pbx, "eth0", []string{plan4.cidr(plan4.pbx)}})
	for _, cmd := range [][]string{
		{"-n", l.phone.name, "route", "add", "198.51.100.0/24", "via", "203.0.113.1"},
		{"-n", l.car.name, "route", "add", "203.0.113.0/24", "via", "198.51.100.2"},
		// TPROXY: the steered packets are delivered locally, to the impairer's socket.
		{"-n", router.name, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100"},
		{"-n", router.name, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"},
	} {
		if err := ipCmd(cmd...); err != nil {
			tb.t.Fatal(err)
		}
	}
	if err := router.sysctl("net.ipv4.ip_forward=1"); err != nil {
		tb.t.Fatal(err)
	}
	const impairPort = 15000
	rules := fmt.Sprintf(`table ip impair {
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		iifname "mp0" udp dport 20000-29999 tproxy to :%d meta mark set 0x1 accept
	}
}
`, impairPort)
	cmd := router.command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.t.Fatalf("nft in %s: %v: %s", router.name, err, out)
	}
	return l, newImpairer(tb.t, router, impairPort)
}

// impairer is the test's netem: it receives the UDP the router's TPROXY rule steers to it,
// drops RTP (to an even port) with a probability, delays every packet by a uniform draw, and
// sends it on to where it was going from where it came (a transparent socket bound to the
// phone's address). It starts clean.
type impairer struct {
	t      testing.TB
	ns     *netns
	ln     *net.UDPConn
	wg     sync.WaitGroup // the reader and the packets in flight
	mu     sync.Mutex     // guards the following
	rng    *rand.Rand
	loss   float64
	dmin   time.Duration
	dmax   time.Duration
	out    map[netip.AddrPort]*net.UDPConn // by the source it stands for
	n      impairCounts
	closed bool
}

type impairCounts struct {
	rtp, dropped, rtcp  int
	jitterIn, jitterOut jitterMeter // of the RTP as it arrived, and as it was sent on
}

// jitterMeter computes RFC 3550's interarrival jitter of an 8 kHz RTP stream (section 6.4.1,
// in floating point) and its mean over the packets.
type jitterMeter struct {
	have   bool
	at     time.Time
	ts     uint32
	j, sum float64 // timestamp units
	n      int
}

func (m *jitterMeter) add(pkt []byte, at time.Time) {
	if len(pkt) < 12 || pkt[0]>>6 != 2 {
		return
	}
	ts := binary.BigEndian.Uint32(pkt[4:])
	if m.have {
		d := at.Sub(m.at).Seconds()*8000 - float64(int32(ts-m.ts))
		m.j += (math.Abs(d) - m.j) / 16
		m.sum += m.j
		m.n++
	}
	m.have, m.at, m.ts = true, at, ts
}

// mean is the mean jitter in ms.
func (m *jitterMeter) mean() float64 {
	if m.n == 0 {
		return 0
	}
	return m.sum / float64(m.n) / 8
}

func (c impairCounts) lossRatio() float64 {
	if c.rtp == 0 {
		return 0
	}
	return float64(c.dropped) / float64(c.rtp)
}

func newImpairer(t testing.TB, ns *netns, port int) *impairer {
	t.Helper()
	im := &impairer{t: t, ns: ns, rng: rand.New(rand.NewPCG(17, 42)), out: map[netip.AddrPort]*net.UDPConn{}}
	err := ns.do(func() error {
		lc := net.ListenConfig{Control: transparent(unix.IP_RECVORIGDSTADDR)}
		c, err := lc.ListenPacket(t.Context(), "udp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			return err
		}
		im.ln = c.(*net.UDPConn)
		return nil
	})
	if err != nil {
		t.Fatalf("impairer: %v", err)
	}
	im.wg.Add(1)
	go im.run()
	t.Cleanup(im.close)
	return im
}

// transparent returns a socket Control that sets IP_TRANSPARENT and SO_REUSEADDR, and opt.
func transparent(opts ...int) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range append([]int{unix.IP_TRANSPARENT}, opts...) {
				if serr == nil {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, o, 1)
				}
			}
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// set changes the impairment and restarts the counts.
func (im *impairer) set(loss float64, dmin, dmax time.Duration) {
	im.mu.Lock()
	defer im.mu.Unlock()
	im.loss, im.dmin, im.dmax, im.n = loss, dmin, dmax, impairCounts{}
}

func (im *impairer) counts() impairCounts {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.n
}

func (im *impairer) run() {
	defer im.wg.Done()
	buf := make([]byte, 2048)
	oob := make([]byte, 128)
	for {
		n, oobn, _, src, err := im.ln.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			return // closed
		}
		dst, ok := origDst(oob[:oobn])
		if !ok {
			continue
		}
		pkt := append([]byte(nil), buf[:n]...)
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		im.mu.Lock()
		if im.closed {
			im.mu.Unlock()
			return
		}
		delay := im.dmin
		if im.dmax > im.dmin {
			delay += time.Duration(im.rng.Int64N(int64(im.dmax - im.dmin)))
		}
		drop := false
		if dst.Port()%2 == 0 {
			im.n.jitterIn.add(pkt, time.Now())
			im.n.rtp++
			if im.rng.Float64() < im.loss {
				im.n.dropped++
				drop = true
			}
		} else {
			im.n.rtcp++
		}
		im.mu.Unlock()
		if drop {
			continue
		}
		im.wg.Add(1)
		time.AfterFunc(delay, func() {
			defer im.wg.Done()
			im.send(src, dst, pkt)
		})
	}
}

// send sends pkt to dst from src, through a transparent socket bound to src.
func (im *impairer) send(src, dst netip.AddrPort, pkt []byte) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.closed {
		return
	}
	c := im.out[src]
	if c == nil {
		err := im.ns.do(func() error {
			lc := net.ListenConfig{Control: transparent()}
			pc, err := lc.ListenPacket(im.t.Context(), "udp4", src.String())
			if err != nil {
				return err
			}
			c = pc.(*net.UDPConn)
			return nil
		})
		if err != nil {
			im.t.Errorf("impairer: a socket as %v: %v", src, err)
			return
		}
		im.out[src] = c
	}
	if _, err := c.WriteToUDPAddrPort(pkt, dst); err != nil {
		im.t.Logf("impairer: send %v -> %v: %v", src, dst, err)
		return
	}
	if dst.Port()%2 == 0 {
		im.n.jitterOut.add(pkt, time.Now())
	}
}

func (im *impairer) close() {
	im.mu.Lock()
	im.closed = true
	im.mu.Unlock()
	im.ln.Close()
	im.wg.Wait()
	for _, c := range im.out {
		c.Close()
	}
}

// origDst reads the original destination of a TPROXY'd datagram (IP_ORIGDSTADDR).
func origDst(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), binary.BigEndian.Uint16(m.Data[2:4])), true
		}
	}
	return netip.AddrPort{}, false
}

// legQuality is the quality a media binding shows in the session table (mediarelay.LegQuality).
type legQuality struct {
	Peer        netip.AddrPort `json:"peer"`
	Packets     uint64         `json:"packets"`
	Expected    uint64         `json:"expected"`
	Lost        int64          `json:"lost"`
	LossPercent float64        `json:"loss_percent"`
	JitterMs    float64        `json:"jitter_ms"`
	MeanJitter  float64        `json:"mean_jitter_ms"`
	Codec       string         `json:"codec"`
	RTTMs       *float64       `json:"rtt_ms"`
	MOS         float64        `json:"mos"`
	Remote      *struct {
		Reports      uint64  `json:"reports"`
		FractionLost float64 `json:"fraction_lost"`
		JitterMs     float64 `json:"jitter_ms"`
	} `json:"remote"`
}

// legQualities reads the quality of the call's two RTP bindings from /sessions: outside is the
// one the outside phone sends to, inside the one the inside phone sends to; ok once both show
// one.
func (s *sipcarProc) legQualities() (outside, inside legQuality, ok bool, state string) {
	b, err := s.get("/sessions")
	if err != nil {
		return outside, inside, false, err.Error()
	}
	var snap struct {
		Bindings []struct {
			Type    string      `json:"type"`
			Faces   string      `json:"faces"`
			Quality *legQuality `json:"quality"`
		} `json:"bindings"`
	}
	if err := json.Unmarshal(b, &snap); err != nil {
		return outside, inside, false, fmt.Sprintf("decode /sessions: %v: %s", err, b)
	}
	var seen int
	for _, e := range snap.Bindings {
		if e.Type != "sip-rtp" || e.Quality == nil {
			continue
		}
		seen++
		if e.Faces == "outside" {
			outside = *e.Quality
		} else {
			inside = *e.Quality
		}
	}
	return outside, inside, seen == 2, string(b)
}

// showSessions runs `sipcar show sessions` in sipcar's namespace.
func (s *sipcarProc) showSessions(t testing.TB) string {
	t.Helper()
	cmd := s.ns.command(suite.sipcar, "show", "sessions")
	cmd.Env = append(cleanEnviron(), "SIPCAR_ADMIN_ADDR="+adminAddr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sipcar show sessions: %v: %s", err, out)
	}
	return string(out)
}

// legEnd is what the quality histograms observed for one side between two reads of the
// metrics: the number of legs and the sums of their MOS, jitter (s) and loss ratio, which for a
// single leg are its values.
type legEnd struct {
	count             float64
	mos, jitter, loss float64
}

func histogramDelta(before, after map[string]float64) map[string]legEnd {
	out := map[string]legEnd{}
	for _, side := range []string{"inside", "outside"} {
		label := fmt.Sprintf(`{side=%q}`, side)
		d := func(name string) float64 { return after[name+label] - before[name+label] }
		e := legEnd{count: d("sipcar_media_leg_mos_count"), mos: d("sipcar_media_leg_mos_sum"),
			jitter: d("sipcar_media_leg_jitter_seconds_sum"), loss: d("sipcar_media_leg_loss_ratio_sum")}
		if e.count == 1 {
			out[side] = e
		} else {
			out[side] = legEnd{count: e.count}
		}
	}
	return out
}

// clearEvents forgets the events and responses baresip sent so far: the next call's wait for an
// event sees only the events that came after.
func (b *baresipProc) clearEvents() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.messages = nil
}

func fmtMs(v *float64) string {
	if v == nil {
		return "none"
	}
	return fmt.Sprintf("%.1f", *v)
}
