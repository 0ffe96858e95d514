package integration

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A real phone behind a home NAT: baresip on a LAN behind a masquerading router registers
// through sipcar with kamailio and takes a call.

// natPhoneLab is the sidecar topology with the phone behind its own NAT:
//
//	phone 198.18.0.130 (eth0) == lan0 198.18.0.129  nat  wan0 198.51.100.20 == out0 198.51.100.1  car  in0 198.18.0.1 == eth0 198.18.0.10 pbx
//
// The phone's LAN is 198.18.0.128/25 and sipcar's inside 198.18.0.0/25 (SIPCAR_INSIDE_NETS):
// two networks nothing joins, so an address of the phone's LAN is no inside address to sipcar.
// nat masquerades what leaves by wan0, to random ports (a port the phone wrote is never the one
// sipcar sees), and forwards nothing inbound that is not part of a flow the LAN opened. sipcar
// has no route to the phone's LAN.
type natPhoneLab struct {
	*upstreamLab
	nat *netns
}

// natPhoneAddr and natInsideNet are the NAT topology's (doctorlab_linux_test.go).
var (
	natLANAddr    = netip.MustParseAddr("198.18.0.129")
	natPublicAddr = netip.MustParseAddr("198.51.100.20") // the NAT's public address (the upstream lab's phone's)
)

func newNATPhoneLab(tb *testbed) *natPhoneLab {
	tb.t.Helper()
	p := plan4
	phone, nat, car, pbx := tb.host("phone"), tb.host("nat"), tb.host("car"), tb.host("pbx")
	tb.link(end{nat, "lan0", []string{natLANAddr.String() + "/25"}}, end{phone, "eth0", []string{natPhoneAddr.String() + "/25"}})
	tb.link(end{car, "out0", []string{p.cidr(p.public)}}, end{nat, "wan0", []string{p.cidr(natPublicAddr)}})
	tb.link(end{car, "in0", []string{p.inside.String() + "/25"}}, end{pbx, "eth0", []string{p.pbx.String() + "/25"}})
	if err := ipCmd("-n", phone.name, "route", "add", "default", "via", natLANAddr.String()); err != nil {
		tb.t.Fatal(err)
	}
	if err := nat.sysctl("net.ipv4.ip_forward=1"); err != nil {
		tb.t.Fatal(err)
	}
	tb.nft(nat, `table ip homenat {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" masquerade random
	}
	chain forward_lan {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "lan0" oifname "wan0" accept
	}
}
`)
	return &natPhoneLab{upstreamLab: &upstreamLab{testbed: tb, phone: phone, car: car, pbx: pbx, plan: p}, nat: nat}
}

// TestBaresipBehindNAT: baresip (alice) on a LAN behind a masquerading router registers through
// sipcar (upstream mode) with kamailio every 10 s; a second baresip (bob) next to kamailio calls
// alice, her phone rings and she answers, and each plays a tone for the call.
//
// It checks on the phone's own link that every 200 to its REGISTERs gives back the top Via the
// phone wrote, byte for byte, with rport's value and received filled in as the NAT's public
// address and port that sipcar saw (RFC 3581: the NAT's port, read from the NAT's outside link),
// and lists the phone's Contact as the phone wrote it; that baresip took each 200 as its
// registration (REGISTER_OK, no REGISTER_FAIL, and at least one refresh); that the call rang it
// (CALL_INCOMING on alice's, CALL_RINGING on bob's) and was established on both phones; and that the RTP each phone sent reached
// the other, through the NAT and sipcar, with its tone in it.
func TestBaresipBehindNAT(t *testing.T) {
	t.Parallel()
	bin := needProgram(t, "baresip", "baresip-core")
	l := newNATPhoneLab(newTestbed(t))
	phoneLink := l.captureNamed(l.phone, "tcpdump-phone", "eth0", netip.AddrPortFrom(natLANAddr, 9))
	natWAN := l.captureNamed(l.nat, "tcpdump-natwan", "wan0", netip.AddrPortFrom(publicAddr, 9))
	deskLink := l.captureNamed(l.pbx, "tcpdump-desk", "eth0", netip.AddrPortFrom(plan4.inside, 9))

	// baresip refreshes its registration at 90% of the expiry the registrar grants: 10 s here.
	l.startKamailioAt(l.pbx, pbxAddr, `modparam("registrar", "min_expires", 10)`)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", "SIPCAR_INSIDE_NETS="+natInsideNet.String())...)
	logCountersOnFailure(t, car)

	const (
		toneAlice = 440 // Hz
		toneBob   = 660
	)
	desk := l.startBaresip(bin, l.pbx, "desk", baresipPhone{
		sipListen: hostPort(pbxAddr, 5070), account: "<sip:bob@198.18.0.10>;regint=300;audio_codecs=pcmu",
		rtpPorts: "31000-31010", toneHz: toneBob,
	})
	desk.waitRegistered(t, "bob@198.18.0.10")
	phone := l.startBaresip(bin, l.phone, "phone", baresipPhone{
		sipListen: hostPort(natPhoneAddr, 5060), account: "<sip:alice@198.51.100.1>;regint=10;audio_codecs=pcmu",
		rtpPorts: "21000-21010", toneHz: toneAlice,
	})
	phone.waitRegistered(t, "alice@198.51.100.1")
	// Two REGISTER_OK events after the control connection was made: at least one refresh
	// answered (the first REGISTER's answer may come before the connection).
	eventually(t, 40*time.Second, "alice: two REGISTER_OK events (a refresh answered)", func() (bool, string) {
		n := countEvents(phone, "REGISTER_OK")
		return n >= 2, fmt.Sprintf("%d REGISTER_OK, %d REGISTER_FAIL", n, countEvents(phone, "REGISTER_FAIL"))
	})

	// bob calls alice's AOR at kamailio, which has only sipcar's inside binding for her.
	desk.command(t, "dial", "sip:alice@198.18.0.10")
	phone.waitEvent(t, "CALL_INCOMING", 20*time.Second)
	desk.waitEvent(t, "CALL_RINGING", 10*time.Second)
	phone.command(t, "accept", "")
	phone.waitEvent(t, "CALL_ESTABLISHED", 20*time.Second)
	desk.waitEvent(t, "CALL_ESTABLISHED", 10*time.Second)

	const relayed = 250 // 5 s each way
	midCall := car.waitMap(t, 30*time.Second, fmt.Sprintf("%d RTP packets each way through both latched sip-rtp bindings", relayed), func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 2 {
			return false
		}
		for _, e := range rtp {
			if e.Peer == nil || e.PacketsSent < relayed || e.PacketsReceived < relayed {
				return false
			}
		}
		return true
	})
	t.Logf("mid-call server map:\n%v", midCall)
	desk.command(t, "hangup", "")
	desk.waitEvent(t, "CALL_CLOSED", 10*time.Second)
	phone.waitEvent(t, "CALL_CLOSED", 10*time.Second)
	car.waitNoMedia(t, "BYE")

	lanPkts := phoneLink.stop(t)
	wanPkts := natWAN.stop(t)
	deskPkts := deskLink.stop(t)

	lanMsgs := wireMessages(lanPkts)
	checkNATRegistrations(t, lanMsgs, wireMessages(wanPkts))
	// For the record: the Request-URI the INVITE reached the phone with (sipcar's inside binding
	// translated to what it stands for).
	for _, w := range lanMsgs {
		if m, err := parseSIP(w.raw); err == nil && m.method() == "INVITE" {
			t.Logf("the INVITE on the phone's link: %s", m.start)
			break
		}
	}
	if n := countEvents(phone, "REGISTER_FAIL"); n != 0 {
		t.Errorf("baresip reported REGISTER_FAIL %d times", n)
	}
	for _, w := range []string{"sipreg", "warning", "error"} {
		for _, line := range strings.Split(phone.output(), "\n") {
			if strings.Contains(strings.ToLower(line), w) && !strings.Contains(line, "SIP/2.0") {
				t.Logf("baresip (alice) logged: %s", line)
			}
		}
	}

	// The media: sipcar latched the NAT's mapping of the phone's RTP (the phone's SDP names
	// its LAN address, which sipcar cannot reach), and each phone's RTP reached the other.
	for _, e := range midCall.of("sip-rtp") {
		if e.Faces == "outside" && (e.Peer == nil || e.Peer.Addr() != natPublicAddr) {
			t.Errorf("the binding facing the outside latched %v; want the NAT's public address %v", e.Peer, natPublicAddr)
		}
	}
	phoneSent := rtpStreams(lanPkts, func(p packet) bool { return p.src.Addr() == natPhoneAddr && p.dst.Addr() == publicAddr })
	phoneRecv := rtpStreams(lanPkts, func(p packet) bool { return p.dst.Addr() == natPhoneAddr && p.src.Addr() == publicAddr })
	deskSent := rtpStreams(deskPkts, func(p packet) bool { return p.src.Addr() == pbxAddr && p.dst.Addr() == plan4.inside })
	deskRecv := rtpStreams(deskPkts, func(p packet) bool { return p.dst.Addr() == pbxAddr && p.src.Addr() == plan4.inside })
	checkRTPDirection(t, "alice (behind the NAT) -> bob", phoneSent, deskRecv, streamSource(phoneSent), relayed, toneAlice, toneBob)
	checkRTPDirection(t, "bob -> alice (behind the NAT)", deskSent, phoneRecv, streamSource(deskSent), relayed, toneBob, toneAlice)
}

// countEvents counts the ctrl_tcp events of a type baresip reported so far.
func countEvents(b *baresipProc, typ string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.messages {
		if m.Event && m.Type == typ {
			n++
		}
	}
	return n
}

// streamSource is the source of the one stream of a set (the zero value if it holds another
// number): for [checkRTPDirection] on a link where the sender's own address is what it sent
// from, which sipcar never sees behind the NAT.
func streamSource(s map[uint32]*rtpStream) netip.AddrPort {
	if len(s) != 1 {
		return netip.AddrPort{}
	}
	for _, v := range s {
		return v.src
	}
	return netip.AddrPort{}
}

// viaParam matches one parameter of a Via (";name" or ";name=value").
var viaParam = regexp.MustCompile(`;\s*([^;=\s]+)(?:\s*=\s*([^;\s]+))?`)

// checkNATRegistrations checks each REGISTER the phone sent (on its LAN) and the 200 that
// answered it: the 200's top Via is the phone's, byte for byte, but for rport's value (the
// NAT's port of that REGISTER, as it crossed the NAT's outside link) and received (the NAT's
// public address); its Contact is the phone's, as written.
func checkNATRegistrations(t *testing.T, lan, wan []wireMsg) {
	t.Helper()
	natPorts := make(map[string]uint16) // by branch: the REGISTER's source port outside the NAT
	for _, w := range wan {
		if w.status() == 0 && w.cseqMethod() == "REGISTER" && w.src.Addr() == natPublicAddr {
			if m, err := parseSIP(w.raw); err == nil {
				natPorts[viaBranch(m.header("Via"))] = w.src.Port()
			}
		}
	}
	requests := make(map[string]*sipMsg) // by branch
	answered := 0
	for _, w := range lan {
		m, err := parseSIP(w.raw)
		if err != nil {
			t.Errorf("on the phone's link: %v", err)
			continue
		}
		if m.cseqMethod() != "REGISTER" {
			continue
		}
		if m.status() == 0 {
			requests[viaBranch(m.header("Via"))] = m
			continue
		}
		if m.status() != 200 {
			t.Logf("a %d answered a REGISTER (authentication is off: unexpected):\n%s", m.status(), m.raw)
			continue
		}
		branch := viaBranch(m.header("Via"))
		req := requests[branch]
		port, ok := natPorts[branch]
		if req == nil || !ok {
			t.Errorf("a 200 to a REGISTER the phone did not send, or that never crossed the NAT (branch %q):\n%s", branch, m.raw)
			continue
		}
		answered++
		sent, got := req.header("Via"), m.header("Via")
		if n := len(m.headers("Via")); n != 1 {
			t.Errorf("the 200 carries %d Vias; want the phone's one:\n%s", n, m.raw)
		}
		// The phone's Via with the first hop's additions: rport's value, received.
		want := fillVia(sent, natPublicAddr, port)
		params := map[string]string{}
		for _, p := range viaParam.FindAllStringSubmatch(got, -1) {
			params[strings.ToLower(p[1])] = p[2]
		}
		if params["received"] != natPublicAddr.String() || params["rport"] != strconv.Itoa(int(port)) {
			t.Errorf("the 200's Via has received=%q rport=%q; want received=%v (the NAT's public address) and rport=%d (its port for this REGISTER)\nsent:     Via: %s\nanswered: Via: %s",
				params["received"], params["rport"], natPublicAddr, port, sent, got)
		}
		if got != want {
			t.Errorf("the 200's Via is not the phone's, byte for byte, with rport and received filled:\nsent:     Via: %s\nanswered: Via: %s\nwant:     Via: %s", sent, got, want)
		}
		// The phone's Contact, as it wrote it, among the 200's (kamailio lists each with its
		// expires parameter, which the phone's own may lack).
		wc := contactURIText(req.header("Contact"))
		found := false
		var listed []string
		for _, c := range m.headers("Contact") {
			listed = append(listed, c)
			if contactURIText(c) == wc {
				found = true
			}
		}
		if !found {
			t.Errorf("the 200 lists Contacts %q; want the phone's %q as it wrote it", listed, wc)
		}
	}
	t.Logf("REGISTERs on the phone's link: %d sent, %d answered 200 (NAT ports seen: %v)", len(requests), answered, natPorts)
	if answered < 2 {
		t.Errorf("%d REGISTERs answered 200 on the phone's link; want the first and at least one refresh", answered)
	}
}

// viaBranch returns the branch parameter of a Via value.
func viaBranch(via string) string {
	for _, p := range viaParam.FindAllStringSubmatch(via, -1) {
		if strings.EqualFold(p[1], "branch") {
			return p[2]
		}
	}
	return ""
}

// fillVia is what RFC 3581 has the first hop do to a Via it received from src: rport gets
// src's port as its value, and received is added (after the Via's other parameters).
func fillVia(via string, addr netip.Addr, port uint16) string {
	out := regexp.MustCompile(`(?i);rport(;|$)`).ReplaceAllString(via, fmt.Sprintf(";rport=%d$1", port))
	return out + ";received=" + addr.String()
}

// contactURIText is the URI of a Contact value as written, between its angle brackets (or up
// to its parameters without them).
func contactURIText(c string) string {
	if i := strings.IndexByte(c, '<'); i >= 0 {
		if j := strings.IndexByte(c[i:], '>'); j >= 0 {
			return c[i+1 : i+j]
		}
	}
	uri, _, _ := strings.Cut(c, ";")
	return strings.TrimSpace(uri)
}
