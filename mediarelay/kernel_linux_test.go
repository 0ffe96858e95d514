package mediarelay

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sipcar/sipcar/mediarelay/kernel"
)

// The kernel path's tests run the relay with KernelOn, a latch window short enough that
// housekeeping sweeps every 50 ms (a leg latched by its SDP address is handed over between
// sweeps, at once), and check where packets went by the relay's own counters: what userspace
// read (Counters().Received) and what the kernel forwarded (Counters().Kernel).

var kernelModes = []relayMode{
	{"fanin-raw", ModeFanIn, SendRaw},
	{"fallback", ModeFallback, SendRaw},
}

const kernelLatchWindow = 200 * time.Millisecond

func startKernelRelay(t *testing.T, l *lab, m relayMode, cfg Config) *Relay {
	t.Helper()
	cfg.Kernel = KernelOn
	if cfg.LatchWindow == 0 {
		cfg.LatchWindow = kernelLatchWindow
	}
	r := l.startRelay(t, m, cfg)
	if on, why := r.KernelPath(); !on {
		t.Fatalf("kernel path off: %s", why)
	}
	return r
}

// waitRules waits until the kernel holds exactly the rules want names (relay port <- peer), and
// returns them.
func waitRules(t *testing.T, r *Relay, want ...[2]netip.AddrPort) map[kernel.Key]kernel.Rule {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rules, err := r.KernelRules()
		if err != nil {
			t.Fatal(err)
		}
		var got, exp [][2]netip.AddrPort
		for k := range rules {
			got = append(got, [2]netip.AddrPort{k.Relay(), k.Peer()})
		}
		exp = append(exp, want...)
		less := func(a, b [2]netip.AddrPort) int {
			if c := a[0].Compare(b[0]); c != 0 {
				return c
			}
			return a[1].Compare(b[1])
		}
		slices.SortFunc(got, less)
		slices.SortFunc(exp, less)
		if slices.Equal(got, exp) {
			return rules
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel rules %v, want %v", got, exp)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func received(r *Relay) uint64 {
	c := r.Counters()
	return c.Received[PathFanIn] + c.Received[PathPerPort]
}

// exchange sends n RTP packets each way and checks each arrives from the relay port of its
// leg.
func exchange(t *testing.T, spec StreamSpec, phone, remote *peer, seq0, n int) {
	t.Helper()
	for i := range n {
		out := rtpPacket(uint16(seq0+i), uint32(160*(seq0+i)), 0xa, byte(i))
		phone.send(spec.A.RTP, out)
		remote.expect(out, spec.B.RTP)
		back := rtpPacket(uint16(seq0+i), uint32(160*(seq0+i)), 0xb, byte(i))
		remote.send(spec.B.RTP, back)
		phone.expect(back, spec.A.RTP)
	}
}

func TestKernelForwardsLatchedLegs(t *testing.T) {
	for _, m := range kernelModes {
		for _, f := range families {
			t.Run(m.name+"/"+f.name, func(t *testing.T) {
				l := newLab(t)
				r := startKernelRelay(t, l, m, Config{})
				spec := pairSpec(f)
				phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
				phoneRTCP, remoteRTCP := l.listen(t, l.phone, f.at(f.phone, 30001).String()), l.listen(t, l.remote, f.at(f.remote, 40001).String())
				s := addStream(t, r, spec)

				// Latching happens in userspace; the hand-over pass it wakes hands both legs over.
				// (One packet each way: the first latches its leg, and a second could meet the
				// hand-over half done.)
				exchange(t, spec, phone, remote, 0, 1)
				waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})
				before, kernelBefore := received(r), r.Counters().Kernel
				exchange(t, spec, phone, remote, 1, 51)
				if got := received(r) - before; got != 0 {
					t.Errorf("userspace read %d packets after the hand-over, want 0", got)
				}
				if got := r.Counters().Kernel - kernelBefore; got != 102 {
					t.Errorf("the kernel forwarded %d packets, want 102", got)
				}

				// Counters stay exact across the hand-over: 52 packets of 172 bytes each way.
				st := s.Stats()
				for _, c := range []struct {
					name string
					got  Counts
				}{{"A received", st.A.RTP.Counts}, {"B received", st.B.RTP.Counts}, {"A sent", st.A.Sent}, {"B sent", st.B.Sent}} {
					if c.got != (Counts{Packets: 52, Bytes: 52 * 172}) {
						t.Errorf("%s %+v, want 52 packets, %d bytes", c.name, c.got, 52*172)
					}
				}
				if !st.A.Kernel || !st.B.Kernel {
					t.Errorf("Kernel A %v B %v, want both", st.A.Kernel, st.B.Kernel)
				}
				// Quality says what it rates: the packet userspace analysed, not the kernel's 51.
				if q := st.A.Quality(); !q.Kernel || q.KernelPackets != 51 || q.Packets != 52 || q.Expected != 1 || !strings.Contains(q.String(), "kernel forwarded 51 packets") {
					t.Errorf("leg A quality: kernel %v, kernel packets %d, packets %d, expected %d, %q; want true, 51, 52, 1 and the kernel named",
						q.Kernel, q.KernelPackets, q.Packets, q.Expected, q.String())
				}
				if time.Since(st.A.LastPacket) > 5*time.Second || time.Since(st.B.LastPacket) > 5*time.Second {
					t.Errorf("last packets %v, %v: not from the kernel's counters", st.A.LastPacket, st.B.LastPacket)
				}

				// RTCP stays in userspace.
				rr := rtcpPacket(0xa, 1)
				phoneRTCP.send(spec.A.RTCP, rr)
				remoteRTCP.expect(rr, spec.B.RTCP)
				if got := received(r) - before; got != 1 {
					t.Errorf("userspace read %d packets for one RTCP report, want 1", got)
				}

				// Anyone else spraying the relay port gets nothing through, and is counted.
				attacker := l.listen(t, l.phone, f.at(f.phone, 30099).String())
				for i := range 20 {
					attacker.send(spec.A.RTP, rtpPacket(uint16(i), 0, 0xbad, 0))
				}
				exchange(t, spec, phone, remote, 52, 1) // what arrives next is the phone's
				// Userspace reads the attacker's packets, and may come to them after the
				// kernel forwarded the phone's.
				for deadline := time.Now().Add(5 * time.Second); s.Stats().A.Bleed < 20 && time.Now().Before(deadline); {
					time.Sleep(10 * time.Millisecond)
				}
				if st := s.Stats(); st.A.Bleed != 20 {
					t.Errorf("bleed %d, want the attacker's 20 packets", st.A.Bleed)
				}

				// Hold takes the rules away at once; userspace forwards meanwhile.
				held := spec
				held.Hold = true
				if err := r.UpdateStream(s, held); err != nil {
					t.Fatal(err)
				}
				if rules, _ := r.KernelRules(); len(rules) != 0 {
					t.Fatalf("%d kernel rules right after hold, want none", len(rules))
				}
				before = received(r)
				exchange(t, spec, phone, remote, 53, 2)
				if got := received(r) - before; got != 4 {
					t.Errorf("userspace read %d packets on hold, want 4", got)
				}
				if err := r.UpdateStream(s, spec); err != nil {
					t.Fatal(err)
				}
				waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})

				// The end of the stream takes its rules away at once, and counts survive it.
				r.RemoveStream(s)
				if rules, _ := r.KernelRules(); len(rules) != 0 {
					t.Fatalf("%d kernel rules after RemoveStream, want none", len(rules))
				}
				if st := s.Stats(); st.A.RTP.Packets != 55 || st.B.Sent.Packets-st.B.SentRTCP.Packets != 55 {
					t.Errorf("after removal: A received %d, B sent %d RTP; want 55", st.A.RTP.Packets, st.B.Sent.Packets-st.B.SentRTCP.Packets)
				}
				time.Sleep(2 * slotGrace)
				if st := s.Stats(); st.A.RTP.Packets != 55 || st.B.Sent.Packets-st.B.SentRTCP.Packets != 55 {
					t.Errorf("after the slot was freed: A received %d, B sent %d RTP; want 55", st.A.RTP.Packets, st.B.Sent.Packets-st.B.SentRTCP.Packets)
				}
			})
		}
	}
}

// A stream whose legs are of different families (an IPv6 phone, an IPv4 PBX) stays in userspace:
// the program cannot change a packet's IP version. Media flows both ways through sweeps that
// would otherwise have handed it over.
func TestKernelLeavesMixedFamilies(t *testing.T) {
	for _, m := range kernelModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			r := startKernelRelay(t, l, m, Config{})
			spec := StreamSpec{CallID: "mixed", A: pairSpec(families[1]).A, B: pairSpec(families[0]).B}
			phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
			addStream(t, r, spec)
			exchange(t, spec, phone, remote, 0, 2)
			time.Sleep(4 * kernelLatchWindow) // several sweeps after both legs latched
			if rules, err := r.KernelRules(); err != nil || len(rules) != 0 {
				t.Fatalf("kernel rules %v (%v), want none for a stream across families", rules, err)
			}
			before := received(r)
			exchange(t, spec, phone, remote, 2, 10)
			if got := received(r) - before; got != 20 {
				t.Errorf("userspace read %d packets, want all 20", got)
			}
		})
	}
}

// A re-INVITE that moves the phone's media to another port takes the old rule away at once;
// the new port, once it latched, gets one, and the remote's rule sends there.
func TestKernelReinviteMovesRule(t *testing.T) {
	f := families[0]
	l := newLab(t)
	r := startKernelRelay(t, l, kernelModes[0], Config{})
	spec := pairSpec(f)
	phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
	s := addStream(t, r, spec)
	exchange(t, spec, phone, remote, 0, 2)
	waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})

	moved := spec
	moved.A.Peer = f.at(f.phone, 30020)
	phone2 := l.listen(t, l.phone, moved.A.Peer.String())
	if err := r.UpdateStream(s, moved); err != nil {
		t.Fatal(err)
	}
	rules, err := r.KernelRules()
	if err != nil {
		t.Fatal(err)
	}
	for k, rule := range rules {
		if k.Peer() == spec.A.Peer {
			t.Errorf("the old port's rule survived the re-INVITE")
		}
		if _, to := rule.Endpoints(k); to == spec.A.Peer {
			t.Errorf("a rule still sends to the old port")
		}
	}
	exchange(t, moved, phone2, remote, 2, 2)
	rules = waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, moved.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})
	for k, rule := range rules {
		if k.Peer() == spec.B.Peer {
			if _, to := rule.Endpoints(k); to != moved.A.Peer {
				t.Errorf("the remote's rule sends to %v, want the new port %v", to, moved.A.Peer)
			}
		}
	}
	before := received(r)
	exchange(t, moved, phone2, remote, 4, 10)
	if got := received(r) - before; got != 0 {
		t.Errorf("userspace read %d packets after the move was handed over, want 0", got)
	}
}

// Packets the kernel forwards keep a stream from going idle; once they stop, it does.
func TestKernelTrafficKeepsStreamAlive(t *testing.T) {
	const idle = 600 * time.Millisecond
	f := families[0]
	l := newLab(t)
	events := &eventLog{}
	r := startKernelRelay(t, l, kernelModes[0], Config{IdleTimeout: idle, Events: events})
	spec := pairSpec(f)
	phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
	s := addStream(t, r, spec)
	exchange(t, spec, phone, remote, 0, 1)
	waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})
	before := received(r)
	for i := range 30 { // 1.5 s of kernel-only traffic, 2.5 idle timeouts
		exchange(t, spec, phone, remote, 1+i, 1)
		time.Sleep(50 * time.Millisecond)
	}
	if got := received(r) - before; got != 0 {
		t.Fatalf("userspace read %d packets, want 0 (the test is about the kernel's)", got)
	}
	if _, idled := events.snapshot(); len(idled) != 0 {
		t.Fatalf("idle reported while the kernel forwarded its packets")
	}
	deadline := time.Now().Add(5 * idle)
	for {
		if _, idled := events.snapshot(); len(idled) == 1 && idled[0] == s {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no idle report after the traffic stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if reports := events.trafficReports(); len(reports) == 0 || reports[len(reports)-1].A.RTP.Packets != 31 {
		t.Errorf("the last traffic report does not count the kernel's packets: %+v", reports[len(reports)-1].A.RTP)
	}
}

// On a muxed leg, the kernel forwards RTP and leaves RTCP to userspace.
func TestKernelMuxLeavesRTCP(t *testing.T) {
	f := families[0]
	l := newLab(t)
	r := startKernelRelay(t, l, kernelModes[0], Config{})
	spec := pairSpec(f)
	spec.A.Mux, spec.B.Mux = true, true
	phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
	s := addStream(t, r, spec)
	exchange(t, spec, phone, remote, 0, 1)
	waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})
	before := received(r)
	exchange(t, spec, phone, remote, 1, 5)
	rr := rtcpPacket(0xa, 1)
	phone.send(spec.A.RTP, rr)
	remote.expect(rr, spec.B.RTP)
	if got := received(r) - before; got != 1 {
		t.Errorf("userspace read %d packets, want the one RTCP report", got)
	}
	if st := s.Stats(); st.A.RTCP.Packets != 1 || st.A.RTP.Packets != 6 {
		t.Errorf("A: %d RTCP, %d RTP; want 1, 6", st.A.RTCP.Packets, st.A.RTP.Packets)
	}
}

// Close detaches the program: nothing of sipcar is left on the namespace's interfaces.
func TestKernelCloseLeavesNothing(t *testing.T) {
	l := newLab(t)
	m := kernelModes[0]
	r := l.newRelay(t, m, Config{Kernel: KernelOn, LatchWindow: kernelLatchWindow})
	spec := pairSpec(families[0])
	phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
	addStream(t, r, spec)
	go r.Run(t.Context())
	exchange(t, spec, phone, remote, 0, 1)
	waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})
	attached := func() []string {
		var names []string
		var err error
		in(t, l.sipcar, func() { names, err = kernel.Attachments() })
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(names)
		return names
	}
	if got := attached(); !slices.Equal(got, []string{"in0", "out0"}) {
		t.Fatalf("program attached to %v, want in0 and out0", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := attached(); len(got) != 0 {
		t.Fatalf("program still attached to %v after Close", got)
	}
	// The media goes back to userspace's way: no socket now, so nothing arrives, and nothing
	// is forwarded in the kernel either.
	phone.send(spec.A.RTP, rtpPacket(9, 0, 0xa, 0))
}

// Behind a bridge with br_netfilter on (a Docker host's containers), where fan-in's TPROXY
// does not reach (the ports' own sockets take the packets in ModeAuto), the kernel path takes
// the latched legs all the same: the program sits on the bridge's ingress, which packets
// delivered to the host pass, and sends out of the bridge.
func TestKernelThroughBridge(t *testing.T) {
	l := newLab(t)
	l.bridgeInside(t)
	run(t, "ip", "-n", l.sipcar, "route", "add", "default", "via", "198.51.100.2")
	run(t, "ip", "netns", "exec", l.sipcar, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
	r := startKernelRelay(t, l, relayMode{"auto", ModeAuto, SendRaw}, Config{Sides: labSides()})
	f := families[0]
	spec := pairSpec(f)
	phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
	s := addStream(t, r, spec)
	exchange(t, spec, phone, remote, 0, 2)
	waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})
	var names []string
	var err error
	in(t, l.sipcar, func() { names, err = kernel.Attachments() })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"br0", "out0"}) {
		t.Errorf("program attached to %v, want br0 and out0", names)
	}
	before := received(r)
	exchange(t, spec, phone, remote, 2, 20)
	if got := received(r) - before; got != 0 {
		t.Errorf("userspace read %d packets after the hand-over, want 0", got)
	}
	if st := s.Stats(); st.A.RTP.Packets != 22 || st.B.RTP.Packets != 22 {
		t.Errorf("received A %d B %d, want 22 each", st.A.RTP.Packets, st.B.RTP.Packets)
	}
}

// refuseKernel makes the kernel refuse every batch of rule changes until the returned function
// lets it accept them again.
func refuseKernel(r *Relay) (restore func()) {
	kp := r.kern
	kp.mu.Lock()
	defer kp.mu.Unlock()
	apply := kp.apply
	kp.apply = func([]kernel.Key, []kernel.Rule, []kernel.Key) error { return errors.New("refused by the test") }
	return func() {
		kp.mu.Lock()
		defer kp.mu.Unlock()
		kp.apply = apply
	}
}

// A rule whose deletion failed would go on forwarding for a leg that is gone: the sweep
// deletes it again until the kernel takes it.
func TestKernelRetriesFailedDelete(t *testing.T) {
	l := newLab(t)
	r := startKernelRelay(t, l, kernelModes[0], Config{})
	spec := pairSpec(families[0])
	phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
	s := addStream(t, r, spec)
	exchange(t, spec, phone, remote, 0, 2)
	waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})

	restore := refuseKernel(r)
	r.RemoveStream(s)
	time.Sleep(3 * kernelLatchWindow) // sweeps, every one refused
	if rules, err := r.KernelRules(); err != nil || len(rules) != 2 {
		t.Fatalf("kernel rules %v (%v) while the kernel refuses, want the 2 left behind", rules, err)
	}
	restore()
	waitRules(t, r)
}

// A leg the kernel refused once stays in userspace, and is offered again after the retry
// time.
func TestKernelRetriesFailedHandOver(t *testing.T) {
	l := newLab(t)
	r := startKernelRelay(t, l, kernelModes[0], Config{})
	r.kern.mu.Lock()
	r.kern.retry = 4 * kernelLatchWindow
	r.kern.mu.Unlock()
	spec := pairSpec(families[0])
	phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
	addStream(t, r, spec)

	restore := refuseKernel(r)
	exchange(t, spec, phone, remote, 0, 2)
	time.Sleep(2 * kernelLatchWindow)
	before := received(r)
	exchange(t, spec, phone, remote, 2, 5)
	if got := received(r) - before; got != 10 {
		t.Errorf("userspace read %d packets while the kernel refused the legs, want 10", got)
	}
	restore()
	waitRules(t, r, [2]netip.AddrPort{spec.A.RTP, spec.A.Peer}, [2]netip.AddrPort{spec.B.RTP, spec.B.Peer})
	before = received(r)
	exchange(t, spec, phone, remote, 7, 5)
	if got := received(r) - before; got != 0 {
		t.Errorf("userspace read %d packets after the retried hand-over, want 0", got)
	}
}

// A leg latched for good goes to the kernel without waiting for a sweep (here, none comes
// while the test runs): latched by its first packet from the SDP address, or by Latch, as a
// standby taking over calls latches them. Until the hand-over, every packet of the stream
// crosses userspace.
func TestKernelHandsOverWithoutSweep(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			l := newLab(t)
			r := startKernelRelay(t, l, kernelModes[0], Config{sweep: time.Hour})
			spec := pairSpec(f)
			phone, remote := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.remote, spec.B.Peer.String())
			addStream(t, r, spec)
			exchange(t, spec, phone, remote, 0, 1)
			want := [][2]netip.AddrPort{{spec.A.RTP, spec.A.Peer}, {spec.B.RTP, spec.B.Peer}}
			waitRules(t, r, want...)
			before, kernelBefore := received(r), r.Counters().Kernel
			exchange(t, spec, phone, remote, 1, 10)
			if got, kern := received(r)-before, r.Counters().Kernel-kernelBefore; got != 0 || kern != 20 {
				t.Errorf("after the hand-over: userspace read %d packets, the kernel forwarded %d; want 0 and 20", got, kern)
			}

			// A standby's restored stream: latched before any packet.
			restored := spec
			restored.CallID = "call-2@phone"
			restored.A.RTP, restored.A.RTCP = f.at(f.sipcarIn, 20004), f.at(f.sipcarIn, 20005)
			restored.B.RTP, restored.B.RTCP = f.at(f.sipcarOut, 20006), f.at(f.sipcarOut, 20007)
			restored.A.Peer, restored.B.Peer = f.at(f.phone, 30002), f.at(f.remote, 40002)
			s := addStream(t, r, restored)
			for _, leg := range []struct {
				leg  Leg
				peer netip.AddrPort
			}{{LegA, restored.A.Peer}, {LegB, restored.B.Peer}} {
				if err := r.Latch(s, leg.leg, false, leg.peer); err != nil {
					t.Fatal(err)
				}
			}
			waitRules(t, r, append(want, [2]netip.AddrPort{restored.A.RTP, restored.A.Peer}, [2]netip.AddrPort{restored.B.RTP, restored.B.Peer})...)
		})
	}
}

// The kernel path reuses a route answer for a while (a burst of hand-overs asks the same
// questions), and asks again after it: a destination without a route, then given one, is
// refused at first and reachable later.
func TestKernelRouteAnswersExpire(t *testing.T) {
	l := newLab(t)
	r := startKernelRelay(t, l, kernelModes[0], Config{})
	f := families[0]
	from, to := f.at(f.sipcarOut, 20002).Addr(), netip.MustParseAddr("203.0.113.9")
	out, err := r.kern.f.Route(from, f.at(f.remote, 40000).Addr())
	if err != nil {
		t.Fatalf("route to the remote party: %v", err)
	}
	asked := time.Now()
	if _, err := r.kern.f.Route(from, to); err == nil {
		t.Fatalf("route to %v: found before there was one", to)
	}
	run(t, "ip", "-n", l.sipcar, "route", "add", "203.0.113.0/24", "via", f.remote)
	_, err = r.kern.f.Route(from, to)
	// (A machine too loaded to add the route within the answer's lifetime cannot tell.)
	if err == nil && time.Since(asked) < kernel.RouteTTL {
		t.Errorf("route to %v: asked the kernel again at once, want the answer reused", to)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		got, err := r.kern.f.Route(from, to)
		if err == nil {
			if got != out {
				t.Errorf("route to %v leaves by interface %d, want %d (out0)", to, got, out)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("route to %v: still %v after the route was added", to, err)
		}
	}
}
