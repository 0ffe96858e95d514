package integration

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMediaCalls covers the media shapes of real calls in upstream mode: audio and video in one
// call, early media on a reliable 183 (PRACK), a call that lasts longer than the media
// lifetimes (its pairs must live on while packets flow), and a call whose media stops (its
// pairs are released by the idle timeout while the call is still up).
func TestMediaCalls(t *testing.T) {
	t.Run("audio-video", func(t *testing.T) {
		t.Parallel()
		testAudioVideo(t)
	})
	t.Run("early-media-prack", func(t *testing.T) {
		t.Parallel()
		testEarlyMediaPRACK(t)
	})
	t.Run("longer-than-media-ttl", func(t *testing.T) {
		t.Parallel()
		testLongCall(t)
	})
	t.Run("media-stops", func(t *testing.T) {
		t.Parallel()
		testMediaStops(t)
	})
}

// testAudioVideo: an offer with audio and video gets a relayed pair for each stream on each
// side, and both streams carry media both ways.
func testAudioVideo(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	public := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_av.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	l.writeVideoPcap("phone")
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_av.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 3000, rtpPcap: true})

	// sipp's video stream is two ports above its audio.
	streams := map[string][]netip.AddrPort{ // by faces: the two media addresses it forwards to
		"inside":  {netip.AddrPortFrom(phoneAddr, 6000), netip.AddrPortFrom(phoneAddr, 6002)},
		"outside": {netip.AddrPortFrom(pbxAddr, 6000), netip.AddrPortFrom(pbxAddr, 6002)},
	}
	m := car.waitMap(t, 15*time.Second, "audio and video relayed both ways on each side", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 4 || len(m.of("sip-rtcp")) != 4 {
			return false
		}
		for _, e := range rtp {
			if !slices.Contains(streams[e.Faces], e.ForwardTo) || e.PacketsSent == 0 || e.PacketsReceived == 0 {
				return false
			}
		}
		return true
	})
	ports := make(map[netip.AddrPort]bool)
	for _, e := range m.media() {
		if ports[e.Address] {
			t.Errorf("two bindings share the relay address %v:\n%v", e.Address, m)
		}
		ports[e.Address] = true
		if e.CallID != m.media()[0].CallID {
			t.Errorf("binding %v is not of the call's (%q)", e, m.media()[0].CallID)
		}
	}
	for _, rtp := range m.of("sip-rtp") {
		rtcp := netip.AddrPortFrom(rtp.Address.Addr(), rtp.Address.Port()+1)
		found := false
		for _, e := range m.of("sip-rtcp") {
			if e.Address == rtcp && e.ForwardTo == netip.AddrPortFrom(rtp.ForwardTo.Addr(), rtp.ForwardTo.Port()+1) {
				found = true
			}
		}
		if rtp.Address.Port()%2 != 0 || !found {
			t.Errorf("sip-rtp %v: want an even port and a sip-rtcp binding at %v for %v:%d", rtp, rtcp, rtp.ForwardTo.Addr(), rtp.ForwardTo.Port()+1)
		}
	}

	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")

	// The phone was offered both streams at sipcar's public address, each at its own port.
	var answer []byte
	for _, w := range wireMessages(public.stop(t)) {
		if w.status() == 200 && w.cseqMethod() == "INVITE" {
			answer = w.raw
		}
	}
	msg, err := parseSIP(answer)
	if err != nil {
		t.Fatalf("the 200 OK to the INVITE on the public side: %v", err)
	}
	audio, video := sdpMediaPort(msg.body, "audio"), sdpMediaPort(msg.body, "video")
	if !strings.Contains(msg.body, "c=IN IP4 "+publicAddr.String()) || audio == "" || video == "" || audio == video {
		t.Errorf("the answer on the public side does not offer audio and video at sipcar's public address, each at its port:\n%s", msg.body)
	}
}

// sdpMediaPort returns the port of the first m= line of a media type, or "".
func sdpMediaPort(body, media string) string {
	for _, l := range strings.Split(body, "\r\n") {
		if rest, ok := strings.CutPrefix(l, "m="+media+" "); ok {
			port, _, _ := strings.Cut(rest, " ")
			return port
		}
	}
	return ""
}

// testEarlyMediaPRACK: the PBX answers with a reliable 183 carrying its SDP; the phone PRACKs
// it and media flows both ways before the call is answered; the 200 with the same SDP keeps
// the same pairs.
func testEarlyMediaPRACK(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	public := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_prack.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_prack.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 2000, rtpPcap: true})

	addrs := func(m serverMap) []netip.AddrPort {
		var as []netip.AddrPort
		for _, e := range m.media() {
			as = append(as, e.Address)
		}
		slices.SortFunc(as, func(a, b netip.AddrPort) int { return a.Compare(b) })
		return as
	}
	early := car.waitMap(t, 10*time.Second, "early media both ways through both sip-rtp bindings", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		return len(rtp) == 2 && rtp[0].PacketsSent > 0 && rtp[0].PacketsReceived > 0 && rtp[1].PacketsSent > 0 && rtp[1].PacketsReceived > 0
	})

	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")

	// On the public side, in order: the 183 with SDP at sipcar's public address, the PRACK
	// and its 200, RTP both ways, then the 200 of the INVITE, with the same SDP address.
	pkts := public.stop(t)
	answered := -1
	var sdp183, sdp200 string
	prack, prackOK := false, false
	for i, p := range pkts {
		w := wireMessages([]packet{p})
		if len(w) != 1 {
			continue
		}
		msg, err := parseSIP(w[0].raw)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case msg.status() == 183:
			if msg.header("RSeq") == "" || !strings.Contains(strings.ToLower(msg.header("Require")), "100rel") {
				t.Errorf("the 183 lost its RSeq or Require: 100rel on the way:\n%s", msg.raw)
			}
			if a, err := msg.media(); err == nil {
				sdp183 = a.String()
			}
		case msg.method() == "PRACK":
			prack = true
			if msg.header("RAck") != "1 1 INVITE" {
				t.Errorf("PRACK RAck: %q; want \"1 1 INVITE\"", msg.header("RAck"))
			}
		case msg.status() == 200 && msg.cseqMethod() == "PRACK":
			prackOK = true
		case msg.status() == 200 && msg.cseqMethod() == "INVITE" && answered < 0:
			answered = i
			if a, err := msg.media(); err == nil {
				sdp200 = a.String()
			}
		}
	}
	if !prack || !prackOK {
		t.Errorf("on the public side: PRACK seen %v, its 200 seen %v; want both", prack, prackOK)
	}
	if answered < 0 {
		t.Fatal("no 200 OK to the INVITE on the public side")
	}
	if sdp183 == "" || sdp183 != sdp200 || !strings.HasPrefix(sdp183, publicAddr.String()+":") {
		t.Errorf("the 183's media %q and the 200's %q: want both at the same port of sipcar's public address", sdp183, sdp200)
	}
	phoneMedia := netip.AddrPortFrom(phoneAddr, 6000)
	before := pkts[:answered]
	toPhone := 0
	for _, p := range before {
		if p.proto == "udp" && p.dst == phoneMedia && isRTP(p.payload) {
			toPhone++
		}
	}
	fromPhone := 0
	for _, p := range before {
		if p.proto == "udp" && p.src == phoneMedia && isRTP(p.payload) {
			fromPhone++
		}
	}
	if toPhone == 0 || fromPhone == 0 {
		t.Errorf("before the 200 OK: %d RTP packets from the phone, %d to it; want early media both ways", fromPhone, toPhone)
	}
	t.Logf("early media before the 200 OK: %d RTP packets from the phone, %d to it", fromPhone, toPhone)

	// The 200 repeated the 183's SDP: the pairs the early media used are the call's.
	if len(addrs(early)) != 4 {
		t.Errorf("early media: %d media bindings; want 4 (a pair on each side)", len(addrs(early)))
	}
	if n := sumMetric(car.metrics(t), "sipcar_pinhole_expirations_total", `reason="renegotiated"`); n != 0 {
		t.Errorf("the 200 OK replaced %v media bindings of the early media; want the same pairs kept", n)
	}
}

// mediaLifetimes makes the media pairs short-lived: 3 s until the first packet and 3 s after
// the last.
var mediaLifetimes = []string{"SIPCAR_MEDIA_TTL=3s", "SIPCAR_MEDIA_IDLE_TTL=3s"}

// testLongCall: media flows for 8 s, well past the 3 s lifetimes; the traffic keeps the pairs
// alive to the end.
func testLongCall(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", mediaLifetimes...)...)
	const packets = 400 // 8 s
	l.writeLongRTPPcap("phone", packets)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 8500})

	first := car.waitMap(t, 10*time.Second, "media both ways", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		return len(rtp) == 2 && rtp[0].PacketsReceived > 0 && rtp[1].PacketsReceived > 0
	})
	addrs := func(m serverMap) []netip.AddrPort {
		var as []netip.AddrPort
		for _, e := range m.media() {
			as = append(as, e.Address)
		}
		slices.SortFunc(as, func(a, b netip.AddrPort) int { return a.Compare(b) })
		return as
	}
	want := addrs(first)
	// Watch the pairs until the BYE: the same four bindings all along, their lifetime never
	// above the configured 3 s (so that it is the traffic that keeps them), their counters
	// growing.
	var last serverMap
	shortLived := false
	for !phone.exited() {
		m, err := car.serverMap()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.media()) == 0 {
			break // the BYE (checked below) or the bug this test is for
		}
		if got := addrs(m); !slices.Equal(got, want) {
			t.Fatalf("the call's media bindings changed mid-call: %v, first %v\n%v", got, want, m)
		}
		for _, e := range m.of("sip-rtp") {
			if e.LeftSeconds != nil && *e.LeftSeconds <= 3 {
				shortLived = true
			}
			if e.LeftSeconds != nil && *e.LeftSeconds > 3 {
				t.Errorf("binding %v lives %d s; want at most the configured 3 s", e, *e.LeftSeconds)
			}
		}
		last = m
		time.Sleep(250 * time.Millisecond)
	}
	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	if !shortLived {
		t.Errorf("no sip-rtp binding showed a lifetime of 3 s or less: SIPCAR_MEDIA_IDLE_TTL=3s did not apply")
	}
	// The last look before the BYE saw (nearly) the whole 8 s relayed both ways.
	for _, e := range last.of("sip-rtp") {
		if e.PacketsReceived < packets*8/10 || e.PacketsSent < packets*8/10 {
			t.Errorf("binding %v relayed %d/%d packets of the %d-packet (8 s) stream; the pair was cut", e, e.PacketsSent, e.PacketsReceived, packets)
		}
	}
	ms := car.metrics(t)
	for _, reason := range []string{"idle", "setup"} {
		if n := sumMetric(ms, "sipcar_pinhole_expirations_total", `reason="`+reason+`"`); n != 0 {
			t.Errorf("sipcar_pinhole_expirations_total{reason=%q} = %v; want 0 for a call whose media never paused", reason, n)
		}
	}
	t.Logf("last look before the BYE:\n%v", last)
}

// testMediaStops: media flows for 2 s, then the call stays up without media for 9 s; the pairs
// are released by the idle timeout (3 s) while the call is up, and the BYE still ends the call.
func testMediaStops(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", mediaLifetimes...)...)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 9000, rtpPcap: true})

	car.waitMap(t, 10*time.Second, "media both ways", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		return len(rtp) == 2 && rtp[0].PacketsReceived > 0 && rtp[1].PacketsReceived > 0
	})
	car.waitMap(t, 10*time.Second, "the silent call's media bindings released", func(m serverMap) bool {
		return len(m.media()) == 0 && m.MediaPorts.InUse == 0
	})
	if phone.exited() {
		t.Fatalf("the call ended before its media bindings were released: the release was the BYE's, not the idle timeout's")
	}
	if n := sumMetric(car.metrics(t), "sipcar_pinhole_expirations_total", `reason="idle"`); n == 0 {
		t.Errorf("sipcar_pinhole_expirations_total{reason=\"idle\"} = 0 after the media bindings went; want the idle timeout to have released them")
	}
	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	// At debug level sipcar audits every message it relays (the rewrite audit).
	if out := car.output(); !bytes.Contains([]byte(out), []byte(`msg="rewrite audit"`)) || !bytes.Contains([]byte(out), []byte(`before="BYE `)) {
		t.Errorf("sipcar's log shows no relayed BYE after the idle release")
	}
}
