package integration

import (
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFaults is what goes wrong around a call: the PBX stops mid-call and comes back, sipcar is
// asked to stop mid-call (SIGTERM: it drains), and sipcar is killed and restarted in fan-in
// media mode (its nftables table must be replaced, not duplicated).
func TestFaults(t *testing.T) {
	t.Run("pbx-restarts-mid-call", func(t *testing.T) {
		t.Parallel()
		testPBXRestart(t)
	})
	t.Run("sigterm-drains-until-bye", func(t *testing.T) {
		t.Parallel()
		testDrainUntilBye(t)
	})
	t.Run("sigterm-drain-timeout", func(t *testing.T) {
		t.Parallel()
		testDrainTimeout(t)
	})
	t.Run("sigkill-restart-fanin", func(t *testing.T) {
		t.Parallel()
		testKillRestartFanIn(t)
	})
}

// mediaBothWays is a server map condition: the call's two sip-rtp bindings carried packets both
// ways.
func mediaBothWays(m serverMap) bool {
	rtp := m.of("sip-rtp")
	return len(rtp) == 2 && rtp[0].PacketsSent > 0 && rtp[0].PacketsReceived > 0 &&
		rtp[1].PacketsSent > 0 && rtp[1].PacketsReceived > 0
}

// received sums what the call's sip-rtp bindings received.
func received(m serverMap) uint64 {
	var n uint64
	for _, e := range m.of("sip-rtp") {
		n += e.PacketsReceived
	}
	return n
}

// testPBXRestart: the PBX (sipp UAS) is killed mid-call while the phone goes on sending media,
// and a new PBX comes up that does not know the call. sipcar keeps the call's bindings, relays
// the phone's BYE to the new PBX and its 481 back, which ends the call; then a new call works.
func testPBXRestart(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	pbx := l.sipp(l.pbx, "pbx-1", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	l.writeLongRTPPcap("phone-1", 200) // 4 s: media still flows after the PBX is gone
	phone := l.sipp(l.phone, "phone-1", sippOpts{scenario: "uac_restart.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 7000})
	before := car.waitMap(t, 10*time.Second, "media both ways before the PBX stops", mediaBothWays)

	pbx.stop(syscall.SIGKILL)
	// The phone's media now meets a closed port (ICMP port unreachable); sipcar relays on and
	// keeps the call.
	car.waitMap(t, 5*time.Second, "the phone's media still arriving with the PBX gone", func(m serverMap) bool {
		return len(m.of("sip-rtp")) == 2 && received(m) > received(before)+20
	})
	if _, err := car.get("/healthz"); err != nil || car.exited() {
		t.Fatalf("sipcar with the PBX gone: exited %v, /healthz %v", car.exited(), err)
	}

	restarted := l.sipp(l.pbx, "pbx-2", sippOpts{scenario: "uas_orphan_bye.xml", local: pbxAddr.String()})
	l.waitListening(l.pbx, "udp", 5060)
	phone.succeeded(t, 30*time.Second, 1) // its BYE answered (481 from the restarted PBX)
	restarted.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "the BYE answered 481 by the restarted PBX")
	if !regexp.MustCompile(`msg="rewrite audit" method=BYE status=481 `).MatchString(car.output()) {
		t.Errorf("sipcar's log shows no 481 to the BYE relayed back to the phone")
	}

	pbx = l.sipp(l.pbx, "pbx-3", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	phone = l.sipp(l.phone, "phone-2", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 3000, rtpPcap: true})
	car.waitMap(t, 10*time.Second, "media both ways in a call after the PBX came back", mediaBothWays)
	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "the new call's BYE")
}

// lateInvite sends a new INVITE from another phone port and returns sipcar's answer.
func lateInvite(t *testing.T, l *upstreamLab, callID string) *sipMsg {
	t.Helper()
	late := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 5070))
	sipcarAddr := netip.AddrPortFrom(publicAddr, 5060)
	from := "<sip:late@198.51.100.1>;tag=late"
	late.send(t, sipcarAddr, buildSIP("INVITE sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/UDP 198.51.100.20:5070;branch=z9hG4bKlate",
		"From: " + from, "To: <sip:pbx@198.51.100.1>", "Call-ID: " + callID, "CSeq: 1 INVITE",
		"Contact: <sip:late@198.51.100.20:5070>", "Max-Forwards: 70", "Content-Type: application/sdp",
	}, offer(netip.AddrPortFrom(phoneAddr, 7000))))
	resp := late.recv(t, 5*time.Second, "the answer to an INVITE sent while sipcar drains", isResponse("INVITE", 0))
	late.send(t, sipcarAddr, buildSIP("ACK sip:pbx@198.51.100.1:5060 SIP/2.0", []string{
		"Via: SIP/2.0/UDP 198.51.100.20:5070;branch=z9hG4bKlate",
		"From: " + from, "To: " + resp.header("To"), "Call-ID: " + callID, "CSeq: 1 ACK", "Max-Forwards: 70",
	}, ""))
	return resp
}

// checkDraining checks what sipcar does while it drains: /readyz says 503, and a new INVITE
// gets 503 with Retry-After and does not reach the PBX.
func checkDraining(t *testing.T, l *upstreamLab, car *sipcarProc) {
	t.Helper()
	eventually(t, 5*time.Second, "/readyz answering 503 while sipcar drains", func() (bool, string) {
		code, err := car.readyStatus()
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusServiceUnavailable, strconv.Itoa(code)
	})
	resp := lateInvite(t, l, "late-call")
	t.Logf("INVITE while draining: %s, Retry-After: %s, Warning: %s", resp.start, resp.header("Retry-After"), resp.header("Warning"))
	if resp.status() != 503 {
		t.Errorf("a new INVITE while draining was answered %q; want 503", resp.start)
	}
	if n, err := strconv.Atoi(resp.header("Retry-After")); err != nil || n <= 0 {
		t.Errorf("Retry-After: %q; want a number of seconds", resp.header("Retry-After"))
	}
}

// testDrainUntilBye: SIGTERM mid-call. sipcar stops taking calls (503, /readyz 503) but relays
// the call in progress, media and BYE included, and exits 0 once the call ended, without
// waiting for the drain timeout (60 s).
func testDrainUntilBye(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", "SIPCAR_DRAIN_TIMEOUT=60s")...)
	l.writeLongRTPPcap("phone", 250) // 5 s
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 6000})
	before := car.waitMap(t, 10*time.Second, "media both ways before SIGTERM", mediaBothWays)

	if err := car.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	checkDraining(t, l, car)
	car.waitMap(t, 5*time.Second, "the call's media still relayed after SIGTERM", func(m serverMap) bool {
		return mediaBothWays(m) && received(m) > received(before)+40
	})
	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	code, err := car.wait(15 * time.Second)
	if err != nil {
		t.Fatalf("sipcar did not exit after its last call ended (drain timeout 60 s): %v", err)
	}
	if code != 0 {
		t.Errorf("sipcar exited %d after draining; want 0", code)
	}
	// sipcar logs every message it relays (rewrite audit, at debug): the call's BYE is there, the
	// late INVITE must not be.
	if !strings.Contains(car.output(), `msg="rewrite audit" method=BYE status=0 `) {
		t.Errorf("sipcar's log shows no relayed BYE: the check below would prove nothing")
	}
	if strings.Contains(car.output(), `msg="rewrite audit" method=INVITE status=0 call=late-call `) {
		t.Errorf("the INVITE sent while draining was relayed to the PBX")
	}
}

// testDrainTimeout: SIGTERM mid-call with a drain timeout of 5 s and a call that goes on: sipcar
// relays the call's media meanwhile, then exits 0 with the call still up.
func testDrainTimeout(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp", "SIPCAR_DRAIN_TIMEOUT=5s")...)
	l.writeLongRTPPcap("phone", 500) // 10 s
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 30000})
	before := car.waitMap(t, 10*time.Second, "media both ways before SIGTERM", mediaBothWays)

	if err := car.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	checkDraining(t, l, car)
	car.waitMap(t, 3*time.Second, "the call's media still relayed after SIGTERM", func(m serverMap) bool {
		return mediaBothWays(m) && received(m) > received(before)+20
	})
	code, err := car.wait(15 * time.Second)
	if err != nil {
		t.Fatalf("sipcar did not exit after its drain timeout (5 s): %v", err)
	}
	if code != 0 {
		t.Errorf("sipcar exited %d at the end of its drain timeout; want 0", code)
	}
	if phone.exited() || pbx.exited() {
		t.Errorf("the call ended before sipcar's drain timeout (phone exited %v, PBX exited %v): the test did not test the timeout", phone.exited(), pbx.exited())
	}
	phone.stop(syscall.SIGKILL)
	pbx.stop(syscall.SIGKILL)
}

// sipcarTables counts the nftables tables named sipcar in ns.
func sipcarTables(t *testing.T, ns *netns) int {
	t.Helper()
	out, err := nftList(ns, "tables")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "table" && f[2] == "sipcar" {
			n++
		}
	}
	return n
}

// tproxyRules counts the tproxy rules of sipcar's table in ns.
func tproxyRules(t *testing.T, ns *netns) (int, string) {
	t.Helper()
	out, err := nftList(ns, "table", "inet", "sipcar")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(out, " tproxy "), out
}

// testKillRestartFanIn: sipcar in fan-in media mode is killed (SIGKILL) mid-call, which leaves
// its nftables table behind; the restarted sipcar replaces it (one table, the same rules, not
// twice), a new call has media both ways, and after a clean exit no table is left.
func testKillRestartFanIn(t *testing.T) {
	needProgram(t, "nft", "nftables")
	l := newUpstreamLab(newTestbed(t))
	env := l.sipcarEnv("udp", "SIPCAR_MEDIA_MODE=fanin")
	pbx := l.sipp(l.pbx, "pbx-1", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	first := l.startSipcarNamed(l.car, "sipcar-1", env...)
	if n := sipcarTables(t, l.car); n != 1 {
		t.Fatalf("fan-in sipcar running: %d nftables tables named sipcar; want 1", n)
	}
	rules, listing := tproxyRules(t, l.car)
	if rules == 0 {
		t.Fatalf("fan-in sipcar's table has no tproxy rule:\n%s", listing)
	}
	phone := l.sipp(l.phone, "phone-1", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 5000, rtpPcap: true})
	first.waitMap(t, 10*time.Second, "media both ways through the fan-in relay", mediaBothWays)

	first.stop(syscall.SIGKILL)
	first.checkLogClean(t)
	if n := sipcarTables(t, l.car); n != 1 {
		t.Fatalf("after SIGKILL: %d nftables tables named sipcar; want the dead one's table left behind (1)", n)
	}
	// The call died with it; its peers are stopped so that the next call starts clean.
	phone.stop(syscall.SIGKILL)
	pbx.stop(syscall.SIGKILL)

	second := l.startSipcar(l.car, env...)
	if n := sipcarTables(t, l.car); n != 1 {
		t.Errorf("after the restart: %d nftables tables named sipcar; want 1 (replaced, not duplicated)", n)
	}
	if n, listing := tproxyRules(t, l.car); n != rules {
		t.Errorf("after the restart, sipcar's table has %d tproxy rules; want %d, as the first run had:\n%s", n, rules, listing)
	}
	pbx = l.sipp(l.pbx, "pbx-2", sippOpts{scenario: "uas_media.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	phone = l.sipp(l.phone, "phone-2", sippOpts{scenario: "uac_media.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", pauseMS: 3000, rtpPcap: true})
	second.waitMap(t, 10*time.Second, "media both ways through the restarted fan-in relay", mediaBothWays)
	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	second.waitNoMedia(t, "BYE")

	second.stop(syscall.SIGTERM)
	if code, err := second.wait(time.Second); err != nil || code != 0 {
		t.Errorf("the restarted sipcar after SIGTERM: exit %d, %v; want 0", code, err)
	}
	if n := sipcarTables(t, l.car); n != 0 {
		out, _ := nftList(l.car, "ruleset")
		t.Errorf("after a clean exit: %d nftables tables named sipcar; want none:\n%s", n, out)
	}
}
