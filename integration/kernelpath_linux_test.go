package integration

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sipcar/sipcar/mediarelay/kernel"
)

// The kernel fast path (SIPCAR_MEDIA_KERNEL=on) seen from outside: Go peers make a call through
// sipcar, and the test reads what sipcar put into the kernel straight from the kernel (the rules
// map sipcar holds open, found through /proc/<pid>/fdinfo, and the program's attachments in
// sipcar's namespace), besides /servermap and /metrics.

// requireKernelPath skips (outside CI) or fails (in CI) where the kernel path cannot be set up.
func requireKernelPath(t *testing.T) {
	t.Helper()
	f, err := kernel.Open(kernel.Config{Rules: 1, Slots: 1})
	if err == nil {
		f.Close()
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("kernel fast path unavailable: %v", err)
	}
	t.Skipf("kernel fast path unavailable: %v", err)
}

// kernelLab is a goLab whose sipcar hands latched legs to the kernel, with a call up: the phone
// at 7000 (outside), the PBX at 8000 (inside).
type kernelLab struct {
	*goLab
	call     *goCall
	ok       *sipMsg
	answered netip.AddrPort // the PBX's media as the phone knows it (sipcar's public pair)
}

// kernelEnv is what the tests run sipcar with: the kernel path required, fan-in for the rest.
var kernelEnv = []string{"SIPCAR_MEDIA_KERNEL=on", "SIPCAR_MEDIA_MODE=fanin"}

func newKernelLab(t *testing.T, env ...string) *kernelLab {
	t.Helper()
	requireKernelPath(t)
	l := &kernelLab{goLab: newGoLab(t, append(kernelEnv, env...)...)}
	l.start(t)
	return l
}

// newKillableKernelLab is newKernelLab with a sipcar whose way of ending the test decides
// (newGoLab's would count a SIGKILL as a failure).
func newKillableKernelLab(t *testing.T) *kernelLab {
	t.Helper()
	requireKernelPath(t)
	g := &goLab{upstreamLab: newUpstreamLab(newTestbed(t))}
	g.pbxSIP = g.udpPeer(g.pbx, netip.AddrPortFrom(pbxAddr, 5060))
	g.pbxRTP = g.udpPeer(g.pbx, netip.AddrPortFrom(pbxAddr, 8000))
	g.sipcar = g.startSipcarNamed(g.car, "sipcar", g.sipcarEnv("udp", kernelEnv...)...)
	g.phoneSIP = g.udpPeer(g.phone, netip.AddrPortFrom(phoneAddr, 5070))
	g.phoneRTP = g.udpPeer(g.phone, netip.AddrPortFrom(phoneAddr, 7000))
	l := &kernelLab{goLab: g}
	l.start(t)
	return l
}

// start waits for sipcar's word that it has the kernel path and sets the call up.
func (l *kernelLab) start(t *testing.T) {
	t.Helper()
	l.sipcar.waitOutput(t, regexp.MustCompile(`kernel fast path: latched RTP legs are forwarded`), 5*time.Second)
	l.call = placeGoCall(t, l.phoneSIP, l.pbxSIP, "kernel-"+strings.ReplaceAll(t.Name(), "/", "-"), offer(l.phoneRTP.addr))
	l.ok, l.answered = l.call.answer("callee", offer(l.pbxRTP.addr))
	l.call.ack(l.ok)
}

// rule is a kernel rule as the test reads it: the relay port, the latched peer it takes packets
// from, and where they go.
type rule struct{ relay, peer, to netip.AddrPort }

func (r rule) String() string { return fmt.Sprintf("%v<-%v=>%v", r.relay, r.peer, r.to) }

// kernelRules reads the rules map of the sipcar process from the kernel.
func (l *kernelLab) kernelRules(t *testing.T) []rule {
	t.Helper()
	pid := l.sipcar.cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fdinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		b, err := os.ReadFile(filepath.Join(fmt.Sprintf("/proc/%d/fdinfo", pid), fd.Name()))
		if err != nil {
			continue
		}
		m := regexp.MustCompile(`(?m)^map_id:\s+(\d+)`).FindSubmatch(b)
		if m == nil {
			continue
		}
		id, _ := strconv.Atoi(string(m[1]))
		bm, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue
		}
		info, err := bm.Info()
		if err != nil || info.Name != "sipcar_rules" {
			bm.Close()
			continue
		}
		var rules []rule
		var k kernel.Key
		var r kernel.Rule
		it := bm.Iterate()
		for it.Next(&k, &r) {
			_, to := r.Endpoints(k)
			rules = append(rules, rule{k.Relay(), k.Peer(), to})
		}
		err = it.Err()
		bm.Close()
		if err != nil {
			t.Fatal(err)
		}
		return rules
	}
	t.Fatalf("sipcar (pid %d) holds no rules map", pid)
	return nil
}

// waitRules waits until the kernel holds the rules cond accepts.
func (l *kernelLab) waitRules(t *testing.T, what string, cond func([]rule) bool) []rule {
	t.Helper()
	var rules []rule
	eventually(t, 10*time.Second, what, func() (bool, string) {
		rules = l.kernelRules(t)
		return cond(rules), fmt.Sprint(rules)
	})
	return rules
}

// attachments lists the interfaces of sipcar's namespace where the program is attached.
func (l *kernelLab) attachments(t *testing.T) []string {
	t.Helper()
	var names []string
	if err := l.car.do(func() (err error) { names, err = kernel.Attachments(); return err }); err != nil {
		t.Fatal(err)
	}
	return names
}

// handedOver sends a packet each way (the legs latch on them) and waits until the kernel holds
// both legs' rules: the phone's packets to the public pair go to the PBX, the PBX's to the
// inside pair go to the phone.
func (l *kernelLab) handedOver(t *testing.T, phone netip.AddrPort, seq uint16) []rule {
	t.Helper()
	l.bothWays(t, l.call.offered, l.answered, seq, "before the hand-over")
	return l.waitRules(t, "both legs in the kernel", func(rs []rule) bool {
		return len(rs) == 2 && hasRule(rs, rule{l.answered, phone, l.pbxRTP.addr}) && hasRule(rs, rule{l.call.offered, l.pbxRTP.addr, phone})
	})
}

func hasRule(rs []rule, want rule) bool {
	for _, r := range rs {
		if r == want {
			return true
		}
	}
	return false
}

// binding returns the server map's sip-rtp binding at addr.
func binding(m serverMap, addr netip.AddrPort) (entry, bool) {
	for _, e := range m.of("sip-rtp") {
		if e.Address == addr {
			return e, true
		}
	}
	return entry{}, false
}

func TestKernelPath(t *testing.T) {
	t.Run("audio-both-ways-exact-counters", func(t *testing.T) {
		t.Parallel()
		l := newKernelLab(t)
		l.handedOver(t, l.phoneRTP.addr, 1)
		before := l.sipcar.metrics(t)
		const n = 300
		for i := range n {
			l.bothWays(t, l.call.offered, l.answered, uint16(2+i), "in the kernel")
		}
		after := l.sipcar.metrics(t)
		if got := sumMetric(after, "sipcar_media_packets_received_total") - sumMetric(before, "sipcar_media_packets_received_total"); got != 0 {
			t.Errorf("userspace read %v packets after the hand-over, want 0", got)
		}
		if got := sumMetric(after, "sipcar_media_kernel_packets_forwarded_total") - sumMetric(before, "sipcar_media_kernel_packets_forwarded_total"); got != 2*n {
			t.Errorf("the kernel forwarded %v packets, want %d", got, 2*n)
		}
		if got := sumMetric(after, "sipcar_media_path_streams", `path="kernel"`); got != 1 {
			t.Errorf("sipcar_media_path_streams{path=kernel} = %v, want 1", got)
		}
		// Every packet counted, on each binding, both directions: the first pair went through
		// userspace, the rest through the kernel.
		l.sipcar.waitMap(t, 5*time.Second, fmt.Sprintf("%d packets each way on both sip-rtp bindings", n+1), func(m serverMap) bool {
			pub, ok1 := binding(m, l.answered)
			in, ok2 := binding(m, l.call.offered)
			return ok1 && ok2 && pub.PacketsReceived == n+1 && pub.PacketsSent == n+1 && in.PacketsReceived == n+1 && in.PacketsSent == n+1
		})
		// The quality in /sessions says the kernel forwarded all but the first packet, which is
		// all its loss and jitter figures saw.
		eventually(t, 5*time.Second, "both legs' quality naming the kernel's packets", func() (bool, string) {
			out, in, ok, state := l.sipcar.legQualities()
			return ok && out.Kernel && in.Kernel && out.KernelPackets == n && in.KernelPackets == n &&
				out.Packets == n+1 && in.Packets == n+1 && out.Expected == 1 && in.Expected == 1, state
		})
		if text := l.sipcar.showSessions(t); !strings.Contains(text, fmt.Sprintf("kernel forwarded %d packets", n)) {
			t.Errorf("sipcar show sessions does not say the kernel forwarded %d packets:\n%s", n, text)
		}
		l.call.bye(l.ok)
		l.sipcar.waitNoMedia(t, "BYE")
		if rs := l.kernelRules(t); len(rs) != 0 {
			t.Errorf("kernel rules after the BYE: %v", rs)
		}
		l.sipcar.checkLogClean(t)
	})

	t.Run("attacker-gets-nothing", func(t *testing.T) {
		t.Parallel()
		l := newKernelLab(t)
		l.handedOver(t, l.phoneRTP.addr, 1)
		bleed := sumMetric(l.sipcar.metrics(t), "sipcar_media_packets_dropped_total", `reason="bleed"`)
		// Another source on the phone's host sprays the public relay port; the phone talks on.
		attacker := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 7099))
		const spray = 500
		for i := range spray {
			attacker.send(t, l.answered, rtp(0xbad, uint16(i)))
			if i%50 == 0 {
				l.phoneRTP.send(t, l.answered, rtp(0xca, uint16(100+i)))
			}
		}
		l.phoneRTP.send(t, l.answered, rtp(0xca, 999))
		got, legit := 0, 0
		buf := make([]byte, 2048)
		for {
			_ = l.pbxRTP.conn.SetReadDeadline(time.Now().Add(time.Second))
			n, _, err := l.pbxRTP.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if n >= 12 && buf[8] == 0 && buf[9] == 0 && buf[10] == 0x0b && buf[11] == 0xad {
				got++
			} else {
				legit++
			}
		}
		if got != 0 {
			t.Errorf("%d of the attacker's %d packets reached the PBX", got, spray)
		}
		if legit != 11 {
			t.Errorf("%d of the phone's 11 packets reached the PBX", legit)
		}
		eventually(t, 5*time.Second, "every sprayed packet counted as bleed", func() (bool, string) {
			d := sumMetric(l.sipcar.metrics(t), "sipcar_media_packets_dropped_total", `reason="bleed"`) - bleed
			return d == spray, fmt.Sprintf("%v counted", d)
		})
		if rs := l.kernelRules(t); len(rs) != 2 || hasRule(rs, rule{l.answered, attacker.addr, l.pbxRTP.addr}) {
			t.Errorf("kernel rules after the spray: %v", rs)
		}
		l.call.bye(l.ok)
		l.sipcar.waitNoMedia(t, "BYE")
	})

	t.Run("reinvite-moves-kernel-state", func(t *testing.T) {
		t.Parallel()
		l := newKernelLab(t)
		l.handedOver(t, l.phoneRTP.addr, 1)
		// The phone moves its media to port 7002 by re-INVITE.
		moved := l.udpPeer(l.phone, netip.AddrPortFrom(phoneAddr, 7002))
		target, _ := l.call.inDialog(l.ok, "INVITE", 3)
		l.phoneSIP.send(t, target, buildSIP("INVITE "+l.ok.contactURI()+" SIP/2.0", []string{
			"Via: SIP/2.0/UDP " + l.phoneSIP.addr.String() + ";branch=z9hG4bKreinvite3",
			"From: <sip:phone@198.51.100.1>;tag=caller",
			"To: " + l.ok.header("To"),
			"Call-ID: " + l.call.callID,
			"CSeq: 3 INVITE",
			"Contact: <sip:phone@" + l.phoneSIP.addr.String() + ">",
			"Max-Forwards: 70",
			"Content-Type: application/sdp",
		}, offer(moved.addr)))
		req := l.pbxSIP.recv(t, 5*time.Second, "the re-INVITE at the PBX", isRequest("INVITE"))
		back, err := req.viaAddr()
		if err != nil {
			t.Fatal(err)
		}
		// The new address gets a pair of its own on the inside.
		offered, err := req.media()
		if err != nil {
			t.Fatal(err)
		}
		// By the time the PBX has the new offer, the rule of the old port is gone, and nothing
		// sends there any more.
		for _, r := range l.kernelRules(t) {
			if r.peer == l.phoneRTP.addr || r.to == l.phoneRTP.addr {
				t.Errorf("after the re-INVITE the kernel still has %v", r)
			}
		}
		l.pbxSIP.send(t, back, response(req, 200, "OK", "", []string{"Contact: <sip:pbx@" + l.pbxSIP.addr.String() + ">", "Content-Type: application/sdp"}, offer(l.pbxRTP.addr)))
		ok2 := l.phoneSIP.recv(t, 5*time.Second, "the 200 OK of the re-INVITE", isResponse("INVITE", 200))
		dst, ack := l.call.inDialog(ok2, "ACK", 3)
		l.phoneSIP.send(t, dst, ack)

		answered, err := ok2.media()
		if err != nil {
			t.Fatal(err)
		}

		// Media from the new port latches it and goes to the kernel; the PBX's now goes there.
		moved.send(t, answered, rtp(0xca, 50))
		expectRTP(t, l.pbxRTP, 0xca, offered, "the caller's media from its new port")
		l.pbxRTP.send(t, offered, rtp(0xea, 50))
		expectRTP(t, moved, 0xea, answered, "the callee's media to the caller's new port")
		l.waitRules(t, "the new port's rules in the kernel", func(rs []rule) bool {
			return len(rs) == 2 && hasRule(rs, rule{answered, moved.addr, l.pbxRTP.addr}) && hasRule(rs, rule{offered, l.pbxRTP.addr, moved.addr})
		})
		before := sumMetric(l.sipcar.metrics(t), "sipcar_media_kernel_packets_forwarded_total")
		for i := range 20 {
			moved.send(t, answered, rtp(0xca, uint16(51+i)))
			expectRTP(t, l.pbxRTP, 0xca, offered, "the caller's media from its new port, in the kernel")
		}
		if got := sumMetric(l.sipcar.metrics(t), "sipcar_media_kernel_packets_forwarded_total") - before; got != 20 {
			t.Errorf("the kernel forwarded %v of the moved leg's 20 packets", got)
		}
		l.call.bye(ok2)
		l.sipcar.waitNoMedia(t, "BYE")
		if rs := l.kernelRules(t); len(rs) != 0 {
			t.Errorf("kernel rules after the BYE: %v", rs)
		}
	})

	t.Run("idle-timeout", func(t *testing.T) {
		t.Parallel()
		l := newKernelLab(t, mediaLifetimes...)
		l.handedOver(t, l.phoneRTP.addr, 1)
		// Media the kernel forwards keeps the call's pairs for longer than their lifetimes.
		before := sumMetric(l.sipcar.metrics(t), "sipcar_media_kernel_packets_forwarded_total")
		for i := range 60 {
			l.bothWays(t, l.call.offered, l.answered, uint16(2+i), "in the kernel")
			time.Sleep(100 * time.Millisecond)
		}
		if m := l.sipcar.mustServerMap(t); len(m.of("sip-rtp")) != 2 {
			t.Fatalf("after 6 s of kernel-forwarded media the call's pairs went (lifetimes 3 s):\n%v", m)
		}
		if got := sumMetric(l.sipcar.metrics(t), "sipcar_media_kernel_packets_forwarded_total") - before; got != 120 {
			t.Fatalf("the kernel forwarded %v of the 120 packets, want all (the test is about its counters)", got)
		}
		// Silence: the idle timeout releases them, and the kernel's rules go with them.
		l.sipcar.waitMap(t, 10*time.Second, "the pairs released by the idle timeout", func(m serverMap) bool { return len(m.of("sip-rtp")) == 0 })
		if rs := l.kernelRules(t); len(rs) != 0 {
			t.Errorf("kernel rules after the idle timeout: %v", rs)
		}
	})

	t.Run("sigkill-then-restart", func(t *testing.T) {
		t.Parallel()
		l := newKillableKernelLab(t)
		l.handedOver(t, l.phoneRTP.addr, 1)
		if got := l.attachments(t); len(got) != 2 {
			t.Fatalf("program attached to %v, want both veths", got)
		}
		l.sipcar.stop(syscall.SIGKILL)
		if _, err := l.sipcar.wait(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "nothing attached after sipcar was killed", func() (bool, string) {
			got := l.attachments(t)
			return len(got) == 0, fmt.Sprint(got)
		})
		// The phone's media now reaches nobody: the kernel forwards nothing for a dead sipcar.
		l.phoneRTP.send(t, l.answered, rtp(0xca, 77))
		if _, ok := tryRTP(l.pbxRTP, 0xca, time.Second); ok {
			t.Error("media was forwarded after sipcar died")
		}
		// A new sipcar starts clean, and says it has the kernel path.
		again := l.startSipcarNamed(l.car, "sipcar-again", l.sipcarEnv("udp", kernelEnv...)...)
		if got := sumMetric(again.metrics(t), "sipcar_media_kernel_path", `mode="on"`); got != 1 {
			t.Errorf("sipcar_media_kernel_path after the restart = %v, want 1", got)
		}
		if got := l.attachments(t); len(got) != 0 {
			t.Errorf("program attached to %v with no call", got)
		}
		again.checkExit(t)
		if got := l.attachments(t); len(got) != 0 {
			t.Errorf("program attached to %v after sipcar stopped", got)
		}
	})
}
