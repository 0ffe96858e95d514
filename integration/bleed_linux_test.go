package integration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RTP bleed before latching (issue 16): while a leg of a call has not learned its peer yet, an
// attacker on the internet who sprays sipcar's relay ports must get nothing through to the other
// party, and a callee whose media leaves from another address than the one it signals from must
// still get two-way audio once the learning window passed.

// bleedLab is the sidecar topology with the internet between sipcar and the phone, and an
// attacker on another network of it:
//
//	phone 198.51.100.20 (eth0) ==+
//	                              = br0 198.51.100.254 (inet) wan0 203.0.113.1 == eth0 203.0.113.66 attacker
//	car out0 198.51.100.1 =======+
//	car in0 198.18.0.1 == eth0 198.18.0.10 pbx (kamailio, and the caller)
//
// The phone (the callee) registers through sipcar with kamailio; the caller next to kamailio
// calls it. The attacker reaches sipcar's public address through the router inet, like any host
// on the internet, and has no route to the inside.
type bleedLab struct {
	*upstreamLab
	inet, attacker *netns
}

var (
	bleedAttacker  = netip.MustParseAddr("203.0.113.66")
	bleedRouter    = netip.MustParseAddr("198.51.100.254") // inet's address on the phone's segment
	bleedRouterWAN = netip.MustParseAddr("203.0.113.1")
	// phoneMediaAddr is the callee's second address, which its media leaves from in the case
	// where media and signalling differ.
	phoneMediaAddr = netip.MustParseAddr("198.51.100.21")
)

// The RTP streams of the bleed tests, told apart by SSRC: the caller's is rtp.pcap's own.
const (
	callerSSRC   = 0x5ca1ab1e
	calleeSSRC   = 0xca11ee00
	attackerSSRC = 0xbadbad00
)

// bleedPorts is sipcar's relay port range in the bleed tests: small enough that an attacker
// sprays all of it, every port a hundred times a second.
const (
	bleedPortFirst = 20000
	bleedPortLast  = 20019
)

func newBleedLab(tb *testbed) *bleedLab {
	tb.t.Helper()
	p := plan4
	phone, car, pbx := tb.host("phone"), tb.host("car"), tb.host("pbx")
	inet, attacker := tb.host("inet"), tb.host("attacker")
	if err := ipCmd("-n", inet.name, "link", "add", "br0", "type", "bridge"); err != nil {
		tb.t.Fatal(err)
	}
	tb.link(end{car, "out0", []string{p.cidr(p.public)}}, end{inet, "p0", nil})
	tb.link(end{phone, "eth0", []string{p.cidr(p.phone)}}, end{inet, "p1", nil})
	for _, port := range []string{"p0", "p1"} {
		if err := ipCmd("-n", inet.name, "link", "set", port, "master", "br0"); err != nil {
			tb.t.Fatal(err)
		}
	}
	if err := ipCmd("-n", inet.name, "addr", "add", p.cidr(bleedRouter), "dev", "br0"); err != nil {
		tb.t.Fatal(err)
	}
	if err := ipCmd("-n", inet.name, "link", "set", "br0", "up"); err != nil {
		tb.t.Fatal(err)
	}
	tb.link(end{inet, "wan0", []string{bleedRouterWAN.String() + "/24"}}, end{attacker, "eth0", []string{bleedAttacker.String() + "/24"}})
	if err := inet.sysctl("net.ipv4.ip_forward=1"); err != nil {
		tb.t.Fatal(err)
	}
	if err := ipCmd("-n", car.name, "route", "add", "203.0.113.0/24", "via", bleedRouter.String()); err != nil {
		tb.t.Fatal(err)
	}
	if err := ipCmd("-n", attacker.name, "route", "add", "default", "via", bleedRouterWAN.String()); err != nil {
		tb.t.Fatal(err)
	}
	tb.link(end{car, "in0", []string{p.cidr(p.inside)}}, end{pbx, "eth0", []string{p.cidr(p.pbx)}})
	return &bleedLab{upstreamLab: &upstreamLab{testbed: tb, phone: phone, car: car, pbx: pbx, plan: p}, inet: inet, attacker: attacker}
}

// TestBleedBeforeLatching: a caller next to kamailio calls a phone registered through sipcar;
// the phone answers and starts its media half a second after the ACK.
//
// attacker-sprays: an attacker on the internet sprays every port of sipcar's relay range (RTP
// with its own SSRC and a marker in the payload) from before the INVITE to after the BYE. The
// capture on sipcar's public side shows its packets reaching the callee's relay port between
// the answer and the callee's first packet, while that leg had not learned its peer. Not one of
// them reaches the caller (counted on the caller's link, by SSRC and marker), nothing of the
// call reaches the attacker (counted on its socket), sipcar counts them as bleed, and the
// call's audio flows both ways, all of it. The callee (sipp) sends no RTCP: the attacker's
// packets to the leg's RTCP port must not get through either.
//
// attacker-sprays-while-ringing: the same, with the callee ringing for 5 s before it answers,
// longer than sipcar's learning window (3 s): the spray meets the callee's leg while only the
// offer is known, for longer than the window.
//
// media-from-other-address: the callee signals, and writes in its SDP, 198.51.100.20 but sends
// its media from 198.51.100.21. sipcar drops its packets as bleed for the learning window, then
// latches it: the caller gets the rest of the callee's audio and the callee the caller's. Every
// packet the callee sent is either dropped as bleed or delivered.
//
// The two cannot be one call: a callee sending from an address signalling does not name and an
// attacker are indistinguishable sources, and whichever comes first after the window wins.
func TestBleedBeforeLatching(t *testing.T) {
	t.Run("attacker-sprays", func(t *testing.T) {
		t.Parallel()
		testBleedSpray(t, 0)
	})
	t.Run("attacker-sprays-while-ringing", func(t *testing.T) {
		t.Parallel()
		testBleedSpray(t, 5000)
	})
	t.Run("media-from-other-address", func(t *testing.T) {
		t.Parallel()
		testBleedOtherMediaAddress(t)
	})
}

// bleedCall is one call of the bleed tests and what crossed the wires.
type bleedCall struct {
	public, callerLink []packet       // sipcar's public side (out0), the caller's link (pbx eth0)
	calleeMedia        netip.AddrPort // where the callee's media leaves from
	relayPort          netip.AddrPort // sipcar's public relay port the callee was told to send to
	midCall            serverMap      // the server map with media flowing both ways
	metrics            map[string]float64
}

// runBleedCall registers the phone, has the caller call it with 8 s of audio each way and the
// callee's media leaving from calleeMedia, the callee ringing for ringMS before it answers, and runs during the call what duringCall starts (it
// returns the function that stops it, called once the call is over).
func (l *bleedLab) runBleedCall(t *testing.T, calleeMedia netip.Addr, ringMS int, duringCall func() (stop func())) bleedCall {
	t.Helper()
	public := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	callerLink := l.captureNamed(l.pbx, "tcpdump-caller", "eth0", netip.AddrPortFrom(plan4.inside, 9))
	l.startKamailio(l.pbx)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", fmt.Sprintf("SIPCAR_RTP_PORTS=%d-%d", bleedPortFirst, bleedPortLast))...)
	logCountersOnFailure(t, car)
	l.registerThroughSipcar(l.phone, phoneAddr, "alice", false)

	const packets = 400 // 8 s each way
	l.writeRTPPcapSSRC("phone", packets, calleeSSRC)
	callee := l.sipp(l.phone, "phone", sippOpts{scenario: "uas_spray.xml", local: phoneAddr.String(), pauseMS: ringMS,
		extra: []string{"-mi", calleeMedia.String()}})
	l.waitListening(l.phone, "udp", 5060)
	stop := duringCall()
	l.writeLongRTPPcap("caller", packets)
	caller := l.sipp(l.pbx, "caller", sippOpts{scenario: "uac_media.xml", local: pbxAddr.String(), port: 5070,
		media: 6100, remote: hostPort(pbxAddr, 5060), service: "alice", pauseMS: 10000})

	c := bleedCall{calleeMedia: netip.AddrPortFrom(calleeMedia, 6000)}
	c.midCall = car.waitMap(t, 30*time.Second, "RTP both ways through both latched sip-rtp bindings", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 2 {
			return false
		}
		for _, e := range rtp {
			if e.Peer == nil || e.PacketsSent < 50 || e.PacketsReceived < 50 {
				return false
			}
		}
		return true
	})
	t.Logf("mid-call server map:\n%v", c.midCall)
	caller.succeeded(t, 40*time.Second, 1)
	callee.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	stop()
	c.metrics = car.metrics(t)
	c.public = public.stop(t)
	c.callerLink = callerLink.stop(t)

	for _, w := range wireMessages(c.public) {
		if w.status() != 0 || w.dst != netip.AddrPortFrom(phoneAddr, 5060) {
			continue
		}
		if m, err := parseSIP(w.raw); err == nil && m.method() == "INVITE" {
			if a, err := m.media(); err == nil {
				c.relayPort = a
			}
		}
	}
	if !c.relayPort.IsValid() || c.relayPort.Addr() != publicAddr {
		t.Fatalf("no INVITE to the phone with SDP naming sipcar's public address on its public side (found %v)", c.relayPort)
	}
	return c
}

// writeRTPPcapSSRC writes rtp.pcap with n packets (20 ms each) of one SSRC into a sipp's
// working directory before it starts.
func (tb *testbed) writeRTPPcapSSRC(program string, n int, ssrc uint32) {
	tb.t.Helper()
	tmp := filepath.Join(tb.t.TempDir(), "rtp.pcap")
	if err := writeRTPPcap(tmp, n); err != nil {
		tb.t.Fatal(err)
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		tb.t.Fatal(err)
	}
	// Records: a 16-byte header, then Ethernet (14), IPv4 (20), UDP (8) and RTP.
	for off := 24; off+16 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off+8:]))
		binary.BigEndian.PutUint32(b[off+16+42+8:], ssrc)
		off += 16 + n
	}
	tb.writeWorkFile(program, "rtp.pcap", b)
}

// ssrcOf returns an RTP packet's SSRC (0 for what is not RTP).
func ssrcOf(p packet) uint32 {
	if p.proto != "udp" || !isRTP(p.payload) {
		return 0
	}
	return binary.BigEndian.Uint32(p.payload[8:])
}

// countPkts counts the packets keep is true of.
func countPkts(pkts []packet, keep func(packet) bool) int {
	n := 0
	for _, p := range pkts {
		if keep(p) {
			n++
		}
	}
	return n
}

// bleedAttackMarker is in the payload of every packet the attacker sends.
var bleedAttackMarker = []byte("sipcar-test-bleed-attack")

// isAttack reports whether a captured packet carries the attacker's payload, whatever its
// addresses (sipcar would relay it from its own).
func isAttack(p packet) bool {
	return p.proto == "udp" && (bytes.Contains(p.payload, bleedAttackMarker) || ssrcOf(p) == attackerSSRC)
}

// sprayer is the attacker: it sends RTP to every port of a range of sipcar's public address,
// one round every 10 ms, until stopped, and counts what comes back to its socket.
type sprayer struct {
	conn        *net.UDPConn
	target      netip.Addr
	first, last uint16

	stopc, sent, read chan struct{} // stop; the sender and the reader are done
	rounds            atomic.Int64
	mu                sync.Mutex // guards received
	received          []netip.AddrPort
}

// spray starts the attacker in ns at src.
func (tb *testbed) spray(ns *netns, src, target netip.Addr, first, last uint16) *sprayer {
	tb.t.Helper()
	c, err := ns.listenUDP(netip.AddrPortFrom(src, 7078).String())
	if err != nil {
		tb.t.Fatal(err)
	}
	s := &sprayer{conn: c, target: target, first: first, last: last,
		stopc: make(chan struct{}), sent: make(chan struct{}), read: make(chan struct{})}
	go s.send()
	go s.readBack()
	tb.t.Cleanup(s.stop)
	return s
}

func (s *sprayer) send() {
	defer close(s.sent)
	pkt := make([]byte, 12+160)
	pkt[0], pkt[1] = 0x80, 8
	binary.BigEndian.PutUint32(pkt[8:], attackerSSRC)
	for i := 12; i < len(pkt); i += len(bleedAttackMarker) {
		copy(pkt[i:], bleedAttackMarker)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for seq := uint16(0); ; seq++ {
		binary.BigEndian.PutUint16(pkt[2:], seq)
		binary.BigEndian.PutUint32(pkt[4:], uint32(seq)*160)
		for port := int(s.first); port <= int(s.last); port++ {
			// A port that refuses (ICMP) is the attacker's problem, not the test's.
			_, _ = s.conn.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(s.target, uint16(port)))
		}
		s.rounds.Add(1)
		select {
		case <-s.stopc:
			return
		case <-tick.C:
		}
	}
}

func (s *sprayer) readBack() {
	defer close(s.read)
	buf := make([]byte, 2048)
	for {
		_, src, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.mu.Lock()
		s.received = append(s.received, src)
		s.mu.Unlock()
	}
}

// stop ends the spray; stopping twice does nothing.
func (s *sprayer) stop() {
	select {
	case <-s.stopc:
		return
	default:
	}
	close(s.stopc)
	<-s.sent
	s.conn.Close()
	<-s.read
}

// gotBack returns the sources of what reached the attacker's socket.
func (s *sprayer) gotBack() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.received...)
}

func testBleedSpray(t *testing.T, ringMS int) {
	l := newBleedLab(newTestbed(t))
	var atk *sprayer
	c := l.runBleedCall(t, phoneAddr, ringMS, func() func() {
		atk = l.spray(l.attacker, bleedAttacker, publicAddr, bleedPortFirst, bleedPortLast)
		return atk.stop
	})
	from := func(a netip.Addr) func(packet) bool {
		return func(p packet) bool { return p.src.Addr() == a }
	}

	// The order on sipcar's public side: the callee's 200 OK to the INVITE, then its first RTP
	// packet. The attacker's packets to the callee's relay port in between met a leg that had
	// not learned its peer: the case this test is for.
	answered, firstRTP := -1, -1
	for i, p := range c.public {
		switch {
		case answered < 0 && p.proto == "udp" && p.src == netip.AddrPortFrom(phoneAddr, 5060):
			if w := wireMessages([]packet{p}); len(w) == 1 && w[0].status() == 200 && w[0].cseqMethod() == "INVITE" {
				answered = i
			}
		case answered >= 0 && firstRTP < 0 && p.src == c.calleeMedia && p.dst == c.relayPort && ssrcOf(p) == calleeSSRC:
			firstRTP = i
		}
	}
	if answered < 0 || firstRTP < 0 {
		t.Fatalf("on sipcar's public side: the callee's 200 OK at packet %d, its first RTP to %v at %d; want both", answered, c.relayPort, firstRTP)
	}
	toRelayPort := func(p packet) bool { return p.src.Addr() == bleedAttacker && p.dst == c.relayPort }
	before := countPkts(c.public[answered:firstRTP], toRelayPort)
	rtcpPort := netip.AddrPortFrom(c.relayPort.Addr(), c.relayPort.Port()+1)
	attackRTP := countPkts(c.public, toRelayPort)
	attackRTCP := countPkts(c.public, func(p packet) bool { return p.src.Addr() == bleedAttacker && p.dst == rtcpPort })
	t.Logf("attacker: %d rounds over ports %d-%d; %d packets on sipcar's public side, %d to the callee's relay port %v (%d between the answer and the callee's first packet), %d to its RTCP port",
		atk.rounds.Load(), bleedPortFirst, bleedPortLast, countPkts(c.public, from(bleedAttacker)), attackRTP, c.relayPort, before, attackRTCP)
	if before == 0 {
		t.Errorf("no attacker packet reached the callee's relay port %v between the answer and the callee's first packet: the spray did not test the unlatched leg", c.relayPort)
	}

	// Nothing of the attacker reached the caller, nothing of the call reached the attacker.
	atCaller := countPkts(c.callerLink, isAttack)
	leaked := atk.gotBack()
	t.Logf("attacker's packets on the caller's link: %d; packets that reached the attacker's socket: %d", atCaller, len(leaked))
	if atCaller != 0 {
		flows := make(map[string]int)
		for _, p := range c.callerLink {
			if isAttack(p) {
				flows[fmt.Sprintf("%v -> %v", p.src, p.dst)]++
			}
		}
		t.Errorf("%d of the attacker's packets reached the caller's link, relayed by sipcar (%v); want 0", atCaller, flows)
	}
	if len(leaked) != 0 {
		t.Errorf("%d packets reached the attacker's socket (first from %v); want 0", len(leaked), leaked[0])
	}
	bleed := sumMetric(c.metrics, "sipcar_media_packets_dropped_total", `reason="bleed"`)
	t.Logf("sipcar_media_packets_dropped_total{reason=\"bleed\"} = %v", bleed)
	if bleed < float64(before) {
		t.Errorf("sipcar counted %v packets as bleed; want at least the %d the attacker sent to the unlatched leg", bleed, before)
	}

	// The call's audio, all of it, both ways.
	checkBleedAudio(t, c, c.calleeMedia, 0)
	for _, e := range c.midCall.of("sip-rtp") {
		if e.Faces == "outside" && (e.Peer == nil || *e.Peer != c.calleeMedia) {
			t.Errorf("the callee's relay port latched %v; want the callee's media %v", e.Peer, c.calleeMedia)
		}
	}
}

func testBleedOtherMediaAddress(t *testing.T) {
	l := newBleedLab(newTestbed(t))
	if err := ipCmd("-n", l.phone.name, "addr", "add", plan4.cidr(phoneMediaAddr), "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	c := l.runBleedCall(t, phoneMediaAddr, 0, func() func() { return func() {} })
	bleed := sumMetric(c.metrics, "sipcar_media_packets_dropped_total", `reason="bleed"`)
	t.Logf("sipcar_media_packets_dropped_total{reason=\"bleed\"} = %v", bleed)
	if bleed == 0 {
		t.Errorf("sipcar dropped none of the callee's packets from %v as bleed: it latched a source signalling does not name at once", c.calleeMedia)
	}
	checkBleedAudio(t, c, c.calleeMedia, int(bleed))
	var latched *netip.AddrPort
	for _, e := range c.midCall.of("sip-rtp") {
		if e.Faces == "outside" {
			latched = e.Peer
		}
	}
	if latched == nil || *latched != c.calleeMedia {
		t.Errorf("the callee's relay port latched %v; want the callee's media address %v", latched, c.calleeMedia)
	}
	// Before the latch, sipcar sent the caller's audio where the SDP said (198.51.100.20:6000),
	// where nothing listens; after it, to the callee's media address.
	toSDP := countPkts(c.public, func(p packet) bool {
		return p.dst == netip.AddrPortFrom(phoneAddr, 6000) && ssrcOf(p) == callerSSRC
	})
	t.Logf("the caller's RTP sent to the callee's SDP address %v before the latch: %d", netip.AddrPortFrom(phoneAddr, 6000), toSDP)
}

// checkBleedAudio checks both directions of a bleed test's call on the wires: what the callee
// sent from calleeMedia reached the caller, but for dropped packets sipcar dropped as bleed
// (within 2% of what it sent: the last packets of a stream may cross the BYE), and the
// caller's audio reached the callee's media address.
func checkBleedAudio(t *testing.T, c bleedCall, calleeMedia netip.AddrPort, dropped int) {
	t.Helper()
	calleeSent := countPkts(c.public, func(p packet) bool {
		return p.src == calleeMedia && p.dst == c.relayPort && ssrcOf(p) == calleeSSRC
	})
	callerGot := countPkts(c.callerLink, func(p packet) bool {
		return p.dst == netip.AddrPortFrom(pbxAddr, 6100) && p.src.Addr() == plan4.inside && ssrcOf(p) == calleeSSRC
	})
	callerSent := countPkts(c.callerLink, func(p packet) bool {
		return p.src == netip.AddrPortFrom(pbxAddr, 6100) && ssrcOf(p) == callerSSRC
	})
	calleeGot := countPkts(c.public, func(p packet) bool {
		return p.dst == calleeMedia && p.src.Addr() == publicAddr && ssrcOf(p) == callerSSRC
	})
	t.Logf("callee -> caller: %d RTP packets sent from %v, %d reached the caller, %d dropped as bleed", calleeSent, calleeMedia, callerGot, dropped)
	t.Logf("caller -> callee: %d RTP packets sent, %d reached the callee's media address %v", callerSent, calleeGot, calleeMedia)
	within := func(got, want int) bool { return got <= want && 100*(want-got) <= 2*want }
	if calleeSent < 390 || callerGot == 0 || !within(callerGot+dropped, calleeSent) {
		t.Errorf("callee -> caller: %d sent (want the 400 of its pcap), %d delivered + %d dropped as bleed; want the sum within 2%% of what was sent", calleeSent, callerGot, dropped)
	}
	if callerSent < 390 || calleeGot == 0 {
		t.Errorf("caller -> callee: %d sent (want the 400 of its pcap), %d reached the callee", callerSent, calleeGot)
	}
	if dropped == 0 && !within(calleeGot, callerSent) {
		t.Errorf("caller -> callee: %d sent, %d reached the callee; want all but 2%%", callerSent, calleeGot)
	}
}
