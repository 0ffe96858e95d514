package integration

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// A forked call through a real proxy: two phones register one AOR through sipcar with kamailio,
// which forks a third phone's INVITE to both.

// bob2Addr is the third phone outside, which registers bob's AOR as bobAddr's phone does.
var bob2Addr = netip.MustParseAddr("198.51.100.40")

// forkLab is the sidecar topology with three phones outside on one Ethernet segment (a bridge
// in a switch namespace, as in [twoPhoneLab]):
//
//	alice 198.51.100.20 (alice0) ==+
//	bob1  198.51.100.30 (bob10)  ==+= br0 (sw) == out0 198.51.100.1  car  in0 198.18.0.1 == eth0 198.18.0.10 pbx
//	bob2  198.51.100.40 (bob20)  ==+
//
// The embedded upstreamLab's phone is alice.
type forkLab struct {
	*upstreamLab
	bob1, bob2, sw *netns
}

func newForkLab(tb *testbed) *forkLab {
	tb.t.Helper()
	p := plan4
	alice, bob1, bob2, sw := tb.host("alice"), tb.host("bob1"), tb.host("bob2"), tb.host("sw")
	car, pbx := tb.host("car"), tb.host("pbx")
	if err := ipCmd("-n", sw.name, "link", "add", "br0", "type", "bridge"); err != nil {
		tb.t.Fatal(err)
	}
	tb.link(end{car, "out0", []string{p.cidr(p.public)}}, end{sw, "p0", nil})
	tb.link(end{alice, "alice0", []string{p.cidr(p.phone)}}, end{sw, "p1", nil})
	tb.link(end{bob1, "bob10", []string{p.cidr(bobAddr)}}, end{sw, "p2", nil})
	tb.link(end{bob2, "bob20", []string{p.cidr(bob2Addr)}}, end{sw, "p3", nil})
	for _, port := range []string{"p0", "p1", "p2", "p3"} {
		if err := ipCmd("-n", sw.name, "link", "set", port, "master", "br0"); err != nil {
			tb.t.Fatal(err)
		}
	}
	if err := ipCmd("-n", sw.name, "link", "set", "br0", "up"); err != nil {
		tb.t.Fatal(err)
	}
	tb.link(end{car, "in0", []string{p.cidr(p.inside)}}, end{pbx, "eth0", []string{p.cidr(p.pbx)}})
	return &forkLab{upstreamLab: &upstreamLab{testbed: tb, phone: alice, car: car, pbx: pbx, plan: p}, bob1: bob1, bob2: bob2, sw: sw}
}

// TestKamailioForkedCall: bob1 and bob2 (sipp) register the AOR bob through sipcar with
// kamailio, which keeps both contacts; alice calls bob, and kamailio forks the INVITE to both.
// The call crosses sipcar three times with one Call-ID: alice's crossing (outside to inside) and
// a hairpin per fork (inside to outside), each a call state of its own. Both forks answer 183
// with SDP and play early media (bob2 half a second after bob1); bob1 then answers 200, and
// kamailio cancels bob2 (200 to the CANCEL, 487). While both ring, sipcar holds pairs for both
// forks: alice's crossing a pair per early dialog besides the offer's, each hairpin its own;
// the early media of both forks reaches alice, each from its own 183's port. Once answered,
// bob2's pairs go, the offer's binding (which both forks' media reached) shows bob1's hairpin
// as its peer, and media flows both ways between alice and bob1 through sipcar (none directly
// between phones); after the BYE no media binding is left, and the public side names no
// inside address.
func TestKamailioForkedCall(t *testing.T) {
	t.Parallel()
	l := newForkLab(newTestbed(t))
	aliceMedia := netip.AddrPortFrom(phoneAddr, 6000)
	bob1Media, bob2Media := netip.AddrPortFrom(bobAddr, 6000), netip.AddrPortFrom(bob2Addr, 6000)
	bob1SIP, bob2SIP := netip.AddrPortFrom(bobAddr, 5060), netip.AddrPortFrom(bob2Addr, 5060)
	public := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	inside := l.capture(l.car, "in0", netip.AddrPortFrom(pbxAddr, 9))
	atAlice := l.capture(l.phone, "alice0", netip.AddrPortFrom(bobAddr, 9))
	atBob1 := l.capture(l.bob1, "bob10", netip.AddrPortFrom(phoneAddr, 9))
	atBob2 := l.capture(l.bob2, "bob20", netip.AddrPortFrom(phoneAddr, 9))
	l.startKamailio(l.pbx)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	logCountersOnFailure(t, car)

	// Both bobs register the one AOR, each with a Contact of its own (and a Call-ID of its own:
	// sipp's names the local address), so kamailio's location holds two contacts.
	bobs := []struct {
		ns   *netns
		name string
		sip  netip.AddrPort
	}{{l.bob1, "bob1", bob1SIP}, {l.bob2, "bob2", bob2SIP}}
	for _, b := range bobs {
		l.registerThroughSipcar(b.ns, b.sip.Addr(), "bob", false)
	}
	regBindings := map[netip.AddrPort]netip.AddrPort{} // registered Contact -> sipcar's inside binding
	for _, e := range car.mustServerMap(t).of("sip") {
		if (e.ForwardTo == bob1SIP || e.ForwardTo == bob2SIP) && e.Faces == "inside" {
			regBindings[e.ForwardTo] = e.Address
		}
	}
	if len(regBindings) != 2 || regBindings[bob1SIP] == regBindings[bob2SIP] {
		t.Fatalf("sip bindings facing the inside for bob1's and bob2's Contacts: %v; want one each\n%v", regBindings, car.mustServerMap(t))
	}

	bob1 := l.sipp(l.bob1, "bob1", sippOpts{scenario: "kfork_uas_answer.xml", local: bobAddr.String(), echo: true, rtpPcap: true})
	bob2 := l.sipp(l.bob2, "bob2", sippOpts{scenario: "kfork_uas_cancel.xml", local: bob2Addr.String(), rtpPcap: true})
	l.waitListening(l.bob1, "udp", 5060)
	l.waitListening(l.bob2, "udp", 5060)
	alice := l.sipp(l.phone, "alice", sippOpts{scenario: "kfork_uac.xml", local: phoneAddr.String(),
		remote: hostPort(publicAddr, 5060), service: "bob", pauseMS: 4000, rtpPcap: true})

	// Every media binding seen until the BYE released them, with the most packets it showed.
	type seenKey struct {
		callID string
		addr   netip.AddrPort
	}
	seen := make(map[seenKey]entry)
	snapshot := func() (serverMap, error) {
		m, err := car.serverMap()
		if err != nil {
			return m, err
		}
		for _, e := range m.media() {
			k := seenKey{e.CallID, e.Address}
			if old, ok := seen[k]; !ok || e.PacketsSent+e.PacketsReceived > old.PacketsSent+old.PacketsReceived {
				seen[k] = e
			}
		}
		return m, nil
	}
	// rtpByCall counts the sip-rtp bindings of each call state (the Call-ID for alice's
	// crossing, "<Call-ID> to <phone>" for a hairpin).
	rtpByCall := func(m serverMap) map[string][]entry {
		by := make(map[string][]entry)
		for _, e := range m.of("sip-rtp") {
			by[e.CallID] = append(by[e.CallID], e)
		}
		return by
	}
	var callID string
	hairpin := func(to netip.AddrPort) string { return callID + " to " + to.String() }

	// Both forks ring: alice's crossing has the offer's pair and one per early dialog (3
	// sip-rtp bindings), each hairpin its offer's and its answer's (2 each).
	var ringing serverMap
	eventually(t, 30*time.Second, "both forks ringing with pairs of their own", func() (bool, string) {
		m, err := snapshot()
		if err != nil {
			return false, err.Error()
		}
		by := rtpByCall(m)
		for k := range by {
			if !strings.Contains(k, " to ") {
				callID = k
			}
		}
		ringing = m
		return callID != "" && len(by) == 3 && len(by[callID]) == 3 && len(by[hairpin(bob1SIP)]) == 2 &&
			len(by[hairpin(bob2SIP)]) == 2, m.String()
	})
	t.Logf("while both forks ring:\n%v", ringing)
	by := rtpByCall(ringing)
	// The media path is alice -> sipcar -> sipcar -> bob: each of alice's crossing's fork pairs
	// forwards to the inside binding of one hairpin, which forwards to that bob's media.
	hairpinInside := map[string]netip.AddrPort{} // bob -> its hairpin's binding towards its media
	for _, b := range []struct {
		name       string
		sip, media netip.AddrPort
	}{{"bob1", bob1SIP, bob1Media}, {"bob2", bob2SIP, bob2Media}} {
		for _, e := range by[hairpin(b.sip)] {
			if e.ForwardTo == b.media && e.Faces == "inside" {
				hairpinInside[b.name] = e.Address
			}
		}
		if !hairpinInside[b.name].IsValid() {
			t.Errorf("the hairpin to %s (%q) has no sip-rtp binding facing the inside towards its media %v", b.name, hairpin(b.sip), b.media)
			continue
		}
		if !slices.ContainsFunc(by[callID], func(e entry) bool { return e.Faces == "outside" && e.ForwardTo == hairpinInside[b.name] }) {
			t.Errorf("alice's crossing %q has no pair of its own for %s's early dialog (a binding facing the outside towards %v)",
				callID, b.name, hairpinInside[b.name])
		}
	}
	var offerBinding netip.AddrPort // alice's crossing's shared binding for the offer
	for _, e := range by[callID] {
		if e.ForwardTo == aliceMedia && e.Faces == "inside" {
			offerBinding = e.Address
		}
	}
	if !offerBinding.IsValid() {
		t.Errorf("alice's crossing %q has no sip-rtp binding facing the inside towards alice's media %v", callID, aliceMedia)
	}

	// bob1 answers: kamailio cancels bob2, whose hairpin releases its pairs; alice's crossing
	// keeps the offer's pair and bob1's dialog's.
	var settled serverMap
	eventually(t, 30*time.Second, "bob1's dialog settled, bob2's pairs released", func() (bool, string) {
		m, err := snapshot()
		if err != nil {
			return false, err.Error()
		}
		by := rtpByCall(m)
		settled = m
		return len(by) == 2 && len(by[callID]) == 2 && len(by[hairpin(bob1SIP)]) == 2, m.String()
	})
	t.Logf("once bob1 answered:\n%v", settled)
	for _, e := range settled.media() {
		if e.CallID == hairpin(bob2SIP) || (hairpinInside["bob2"].IsValid() && e.ForwardTo == hairpinInside["bob2"]) {
			t.Errorf("bob2's fork still has %v after the call was answered by bob1", e)
		}
	}
	// The offer's binding, which both forks' media reached, now carries bob1's alone: the peer
	// it shows is bob1's hairpin, not the released fork's. bob2 rang last (its 183 comes half a
	// second after bob1's), so its media latched last.
	if offerBinding.IsValid() && hairpinInside["bob1"].IsValid() {
		var peer string
		ok, state := poll(3*time.Second, func() (bool, string) {
			m, err := snapshot()
			if err != nil {
				return false, err.Error()
			}
			for _, e := range m.media() {
				if e.Address == offerBinding {
					peer = "ANY"
					if e.Peer != nil {
						peer = e.Peer.String()
					}
					return e.Peer != nil && *e.Peer == hairpinInside["bob1"], m.String()
				}
			}
			return true, "the offer's binding is gone (the call ended)"
		})
		if !ok {
			t.Errorf("once bob1 answered, alice's offer binding %v shows peer %s; want bob1's hairpin %v (bob2's was %v):\n%s",
				offerBinding, peer, hairpinInside["bob1"], hairpinInside["bob2"], state)
		}
	}

	eventually(t, 30*time.Second, "the call's media pairs released by the BYE", func() (bool, string) {
		m, err := snapshot()
		if err != nil {
			return false, err.Error()
		}
		return len(m.media()) == 0, m.String()
	})
	alice.succeeded(t, 30*time.Second, 1)
	bob1.succeeded(t, 15*time.Second, 1)
	bob2.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	var lines []string
	for _, e := range seen {
		lines = append(lines, e.String())
		if e.ForwardTo.IsValid() && e.ForwardTo.Addr() == publicAddr {
			t.Errorf("media binding %v stands for sipcar's own public address: a loop", e)
		}
	}
	slices.Sort(lines)
	t.Logf("media bindings during the call:\n  %s\nbindings released: %s", strings.Join(lines, "\n  "),
		counters(car, "sipcar_pinhole_expirations_total"))

	// What alice got: a 183 from each fork with media at a port of sipcar's own, early media
	// from both, then the 200 of bob1 with its 183's port, and media both ways with bob1.
	aliceWire := atAlice.stop(t)
	early := map[string]netip.AddrPort{} // fork ("kforkanswer", "kforkcancel") -> its 183's media
	var answered netip.AddrPort
	answeredAt := -1
	for i, p := range aliceWire {
		if p.proto != "udp" || !sipStartLine.Match(p.payload) || p.dst.Addr() != phoneAddr {
			continue
		}
		msg, err := parseSIP(p.payload)
		if err != nil {
			t.Error(err)
			continue
		}
		if msg.cseqMethod() != "INVITE" || (msg.status() != 183 && msg.status() != 200) {
			continue
		}
		media, err := msg.media()
		if err != nil {
			t.Errorf("%q at alice: %v", msg.start, err)
			continue
		}
		if got := msg.header("Call-ID"); got != callID {
			t.Errorf("%q at alice has Call-ID %q; the server map's call is %q", msg.start, got, callID)
		}
		to := msg.header("To")
		switch {
		case msg.status() == 183 && strings.Contains(to, "tag=kforkanswer"):
			early["bob1"] = media
		case msg.status() == 183 && strings.Contains(to, "tag=kforkcancel"):
			early["bob2"] = media
		case msg.status() == 200 && strings.Contains(to, "tag=kforkanswer") && answeredAt < 0:
			answered, answeredAt = media, i
		default:
			t.Errorf("%q at alice with To %q: want 183s of both forks and the 200 of bob1", msg.start, to)
		}
	}
	if !early["bob1"].IsValid() || !early["bob2"].IsValid() || answeredAt < 0 {
		t.Fatalf("at alice: 183 of bob1 with media %v, 183 of bob2 with media %v, 200 of bob1 seen %v; want all three",
			early["bob1"], early["bob2"], answeredAt >= 0)
	}
	if early["bob1"] == early["bob2"] || early["bob1"].Addr() != publicAddr || early["bob2"].Addr() != publicAddr {
		t.Errorf("the forks' 183s reached alice with media at %v and %v; want two ports of sipcar's public address", early["bob1"], early["bob2"])
	}
	if answered != early["bob1"] {
		t.Errorf("bob1's 200 offers alice media at %v; want its 183's %v", answered, early["bob1"])
	}
	var earlyFrom1, earlyFrom2, lateFrom1, lateFrom2, aliceSent, aliceDirect int
	for i, p := range aliceWire {
		if p.proto != "udp" || !isRTP(p.payload) {
			continue
		}
		switch {
		case p.src.Addr() != publicAddr && p.dst.Addr() != publicAddr:
			aliceDirect++
		case p.dst == aliceMedia && p.src == early["bob1"] && i < answeredAt:
			earlyFrom1++
		case p.dst == aliceMedia && p.src == early["bob2"] && i < answeredAt:
			earlyFrom2++
		case p.dst == aliceMedia && p.src == early["bob1"]:
			lateFrom1++
		case p.dst == aliceMedia && p.src == early["bob2"]:
			lateFrom2++
		case p.src == aliceMedia && p.dst == answered:
			aliceSent++
		}
	}
	t.Logf("RTP at alice: before the 200 %d from bob1's port %v and %d from bob2's %v; after it %d from bob1's port and %d from bob2's; %d sent to %v; %d directly between phones",
		earlyFrom1, early["bob1"], earlyFrom2, early["bob2"], lateFrom1, lateFrom2, aliceSent, answered, aliceDirect)
	// Each fork plays 100 packets of early media; alice plays 100 once answered, which bob1
	// echoes.
	if earlyFrom1 < 50 || earlyFrom2 < 50 {
		t.Errorf("early media at alice: %d packets from bob1's fork, %d from bob2's; want at least 50 each", earlyFrom1, earlyFrom2)
	}
	if lateFrom1 < 50 || aliceSent < 50 {
		t.Errorf("media once answered: alice got %d from bob1's port and sent %d to it; want at least 50 each", lateFrom1, aliceSent)
	}

	// What bob1 and bob2 got: media from sipcar only, bob2 a CANCEL.
	bob1Wire, bob2Wire := atBob1.stop(t), atBob2.stop(t)
	rtpAt := func(pkts []packet, phone netip.AddrPort) (in, out, direct int) {
		for _, p := range pkts {
			switch {
			case p.proto != "udp" || !isRTP(p.payload):
			case p.src.Addr() != publicAddr && p.dst.Addr() != publicAddr:
				direct++
			case p.dst == phone:
				in++
			case p.src == phone:
				out++
			}
		}
		return in, out, direct
	}
	in1, out1, direct1 := rtpAt(bob1Wire, bob1Media)
	in2, out2, direct2 := rtpAt(bob2Wire, bob2Media)
	t.Logf("RTP at bob1: %d from sipcar, %d to sipcar, %d direct; at bob2: %d from sipcar, %d to sipcar, %d direct", in1, out1, direct1, in2, out2, direct2)
	if in1 < 50 || out1 < 150 {
		t.Errorf("RTP at bob1: %d from sipcar and %d to it; want at least 50 (alice's, relayed) and 150 (its early media and the echo)", in1, out1)
	}
	if out2 < 50 {
		t.Errorf("RTP at bob2: %d sent to sipcar; want its early media (100)", out2)
	}
	// The offer's binding counts what both forks sent it, not the larger of the two: their
	// streams' counts add up, the released fork's included. (A second of traffic may fall after
	// the last count sipcar showed before the BYE released it.)
	if got := seen[seenKey{callID, offerBinding}].PacketsReceived; offerBinding.IsValid() && int(got) < max(out1, out2)+25 {
		t.Errorf("alice's offer binding %v counted %d packets received; bob1 sent %d and bob2 %d: want their sum, give or take a second's",
			offerBinding, got, out1, out2)
	}
	if d := aliceDirect + direct1 + direct2; d != 0 {
		t.Errorf("%d RTP packets directly between phones; want the media anchored at sipcar", d)
	}
	cancels := 0
	for _, w := range wireMessages(bob2Wire) {
		if strings.HasPrefix(string(w.raw), "CANCEL ") && w.dst == bob2SIP && w.src.Addr() == publicAddr {
			cancels++
		}
	}
	if cancels == 0 {
		t.Errorf("no CANCEL from sipcar reached bob2")
	}
	for _, w := range wireMessages(bob1Wire) {
		if strings.HasPrefix(string(w.raw), "CANCEL ") {
			t.Errorf("bob1, which answered, got a CANCEL:\n%s", w.raw)
		}
	}

	// The public side: both forks reached with media at sipcar's public address, kamailio's
	// answer to bob2's REGISTER lists both contacts, no inside address anywhere.
	wire := wireMessages(public.stop(t))
	for _, dst := range []netip.AddrPort{bob1SIP, bob2SIP} {
		n := 0
		for _, w := range wire {
			if w.dst != dst || !strings.HasPrefix(string(w.raw), "INVITE ") {
				continue
			}
			n++
			msg, err := parseSIP(w.raw)
			if err != nil {
				t.Error(err)
				continue
			}
			if got, err := msg.media(); err != nil || got.Addr() != publicAddr {
				t.Errorf("the INVITE to %v offers media at %v (%v); want sipcar's public address", dst, got, err)
			}
			if got := msg.header("Call-ID"); got != callID {
				t.Errorf("the INVITE to %v has Call-ID %q; want alice's %q", dst, got, callID)
			}
		}
		if n == 0 {
			t.Errorf("no INVITE reached %v: kamailio did not fork to it", dst)
		}
	}
	var contacts string
	for _, w := range wire {
		if w.dst == bob2SIP && w.status() == 200 && w.cseqMethod() == "REGISTER" {
			msg, err := parseSIP(w.raw)
			if err != nil {
				t.Fatal(err)
			}
			all := strings.Join(msg.headers("Contact"), ", ")
			contacts = all
			for _, c := range []netip.AddrPort{bob1SIP, bob2SIP} {
				if !strings.Contains(all, "@"+c.String()) {
					t.Errorf("the 200 of bob2's REGISTER lists Contact %q; want bob1's and bob2's (%v)", all, c)
				}
			}
		}
	}
	if contacts == "" {
		t.Errorf("no 200 to bob2's REGISTER on sipcar's public interface")
	}
	t.Logf("the 200 of bob2's REGISTER lists Contact %s", contacts)
	checkNoInsideAddress(t, "sipcar's public interface", wire)

	// kamailio forked: two INVITEs with alice's Call-ID, one to each registered binding.
	forked := map[netip.AddrPort]int{}
	for _, w := range wireMessages(inside.stop(t)) {
		if w.src == netip.AddrPortFrom(pbxAddr, 5060) && strings.HasPrefix(string(w.raw), "INVITE ") {
			forked[w.dst]++
		}
	}
	if forked[regBindings[bob1SIP]] == 0 || forked[regBindings[bob2SIP]] == 0 {
		t.Errorf("INVITEs from kamailio by destination %v; want one to each registered binding (%v for bob1, %v for bob2)",
			forked, regBindings[bob1SIP], regBindings[bob2SIP])
	}
}
