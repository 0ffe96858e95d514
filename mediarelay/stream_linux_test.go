package mediarelay

import (
	"context"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestRTCPMux(t *testing.T) {
	forEachMode(t, func(t *testing.T, m relayMode, f ipFamily) {
		l := newLab(t)
		r := l.startRelay(t, m, Config{})
		phone := l.listen(t, l.phone, f.at(f.phone, 30000).String())
		remote := l.listen(t, l.remote, f.at(f.remote, 40000).String())
		remoteRTCP := l.listen(t, l.remote, f.at(f.remote, 40001).String())

		// Both legs muxed: RTP and RTCP share each leg's port.
		both := StreamSpec{
			CallID: "mux",
			A:      LegSpec{RTP: f.at(f.sipcarIn, 20000), Mux: true, Peer: phone.addr},
			B:      LegSpec{RTP: f.at(f.sipcarOut, 20002), Mux: true, Peer: remote.addr},
		}
		s := addStream(t, r, both)
		rtp, rtcp := rtpPacket(1, 0, 0xa, 1), rtcpPacket(0xa, 2)
		phone.send(both.A.RTP, rtp)
		remote.expect(rtp, both.B.RTP)
		phone.send(both.A.RTP, rtcp)
		remote.expect(rtcp, both.B.RTP)
		back := rtcpPacket(0xb, 3)
		remote.send(both.B.RTP, back)
		phone.expect(back, both.A.RTP)
		st := s.Stats()
		if st.A.RTP.Packets != 1 || st.A.RTCP.Packets != 1 || st.B.RTCP.Packets != 1 || st.B.RTP.Packets != 0 {
			t.Errorf("A rtp %d rtcp %d, B rtp %d rtcp %d; want 1 1 0 1 (RTCP told apart by payload type)",
				st.A.RTP.Packets, st.A.RTCP.Packets, st.B.RTP.Packets, st.B.RTCP.Packets)
		}
		r.RemoveStream(s)

		// Only leg A muxed: its RTCP leaves from leg B's RTCP port, and comes back to A's RTP port.
		mixed := StreamSpec{
			CallID: "half-mux",
			A:      LegSpec{RTP: f.at(f.sipcarIn, 20010), Mux: true, Peer: phone.addr},
			B:      LegSpec{RTP: f.at(f.sipcarOut, 20012), RTCP: f.at(f.sipcarOut, 20013), Peer: remote.addr},
		}
		s = addStream(t, r, mixed)
		phone.send(mixed.A.RTP, rtcp)
		remoteRTCP.expect(rtcp, mixed.B.RTCP)
		phone.send(mixed.A.RTP, rtp)
		remote.expect(rtp, mixed.B.RTP)
		remoteRTCP.send(mixed.B.RTCP, back)
		phone.expect(back, mixed.A.RTP)
		if st := s.Stats(); st.A.RTCP.Packets != 1 || st.B.RTCP.Packets != 1 || st.B.PeerRTCP != remoteRTCP.addr {
			t.Errorf("A rtcp %d, B rtcp %d from %v; want 1, 1 from %v", st.A.RTCP.Packets, st.B.RTCP.Packets, st.B.PeerRTCP, remoteRTCP.addr)
		}
	})
}

func TestEarlyMediaAndAnswer(t *testing.T) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			r := l.startRelay(t, m, Config{})
			f := families[0]
			spec := pairSpec(f)
			spec.B.Peer = netip.AddrPort{} // the offer went out; no answer yet
			phone := l.listen(t, l.phone, spec.A.Peer.String())
			callee := l.listen(t, l.remote, "198.51.100.2:40000")
			s := addStream(t, r, spec)

			phone.send(spec.A.RTP, rtpPacket(1, 0, 0xa, 1)) // nowhere to go yet
			early := rtpPacket(1, 0, 0xb, 2)                // 183 Session Progress: early media
			callee.send(spec.B.RTP, early)
			phone.expect(early, spec.A.RTP)
			p := rtpPacket(2, 160, 0xa, 3)
			phone.send(spec.A.RTP, p)
			callee.expect(p, spec.B.RTP) // to the callee's latched source
			if got := r.Counters().Dropped[DropNoPeer]; got != 1 {
				t.Errorf("dropped for no peer: %d, want 1 (the packet before any answer)", got)
			}

			// The 200 OK's SDP names another port: packets go there; the callee relearns.
			moved := l.listen(t, l.remote, "198.51.100.2:40010")
			spec.B.Peer = moved.addr
			if err := r.UpdateStream(s, spec); err != nil {
				t.Fatal(err)
			}
			p = rtpPacket(3, 320, 0xa, 4)
			phone.send(spec.A.RTP, p)
			moved.expect(p, spec.B.RTP)
			p = rtpPacket(3, 320, 0xb, 5)
			moved.send(spec.B.RTP, p)
			phone.expect(p, spec.A.RTP)
			if st := s.Stats(); st.B.Peer != moved.addr || !st.B.Final {
				t.Errorf("leg B peer %v final %v, want %v final", st.B.Peer, st.B.Final, moved.addr)
			}
			bad := spec
			bad.B.RTP = f.at(f.sipcarOut, 20004)
			if err := r.UpdateStream(s, bad); err == nil {
				t.Error("UpdateStream accepted a change of relay port")
			}
		})
	}
}

// testClock is a clock the test sets before each packet it sends.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) now() time.Time  { return time.Unix(0, c.ns.Load()) }
func (c *testClock) set(t time.Time) { c.ns.Store(t.UnixNano()) }

func TestStatsLossAndJitter(t *testing.T) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			clock := &testClock{}
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			clock.set(start)
			r := l.startRelay(t, m, Config{Clock: clock.now})
			f := families[0]
			spec := pairSpec(f)
			phone := l.listen(t, l.phone, spec.A.Peer.String())
			remote := l.listen(t, l.remote, spec.B.Peer.String())
			s := addStream(t, r, spec)

			// 20 ms packets at 8 kHz; sequence numbers wrap; three are lost; arrivals late by
			// a known pattern.
			lost := map[int]bool{5: true, 6: true, 13: true}
			delays := []time.Duration{0, 4, 0, 12, 1, 0, 0, 30, 2, 0, 7, 0, 0, 0, 9, 3, 0, 0, 15, 0}
			var wantJitter float64 // RFC 3550 6.4.1, in timestamp units
			var prevTransit float64
			first := true
			var last time.Time
			sent := 0
			for i := range 20 {
				if lost[i] {
					continue
				}
				seq := uint16(65530 + i)
				ts := uint32(1000 + 160*i)
				arrival := start.Add(time.Second + time.Duration(i)*20*time.Millisecond + delays[i]*time.Millisecond)
				clock.set(arrival)
				p := rtpPacket(seq, ts, 0x5eed, byte(i))
				phone.send(spec.A.RTP, p)
				remote.expect(p, spec.B.RTP)
				transit := arrival.Sub(start).Seconds()*8000 - float64(ts)
				if !first {
					wantJitter += (math.Abs(transit-prevTransit) - wantJitter) / 16
				}
				prevTransit, first, last = transit, false, arrival
				sent++
			}
			st := s.Stats().A
			if st.RTP.Packets != uint64(sent) || st.RTP.Bytes != uint64(sent*172) || st.RTP.Lost != 3 || st.RTP.SSRC != 0x5eed {
				t.Errorf("RTP stats %+v, want %d packets, %d bytes, 3 lost, SSRC 0x5eed", st.RTP, sent, sent*172)
			}
			want := time.Duration(wantJitter / 8000 * float64(time.Second))
			if d := st.RTP.Jitter - want; d < -250*time.Microsecond || d > 250*time.Microsecond {
				t.Errorf("jitter %v, want %v (within two timestamp units of integer rounding)", st.RTP.Jitter, want)
			}
			if !st.LastPacket.Equal(last) {
				t.Errorf("last packet at %v, want %v", st.LastPacket, last)
			}
		})
	}
}

func TestIdleReport(t *testing.T) {
	const idle = 10 * time.Second
	l := newLab(t)
	events := &eventLog{}
	r := l.newRelay(t, relayModes[0], Config{IdleTimeout: idle, Events: events})
	f := families[0]
	active := pairSpec(f)
	held := StreamSpec{
		CallID: "held",
		A:      LegSpec{RTP: f.at(f.sipcarIn, 20010), RTCP: f.at(f.sipcarIn, 20011), Peer: f.at(f.phone, 30010)},
		B:      LegSpec{RTP: f.at(f.sipcarOut, 20012), RTCP: f.at(f.sipcarOut, 20013), Peer: f.at(f.remote, 40010)},
		Hold:   true,
	}
	phone := l.listen(t, l.phone, active.A.Peer.String())
	remote := l.listen(t, l.remote, active.B.Peer.String())
	sa, sh := addStream(t, r, active), addStream(t, r, held)
	inBubble(t, r, func(t *testing.T) {
		time.Sleep(idle * 3 / 4)
		p := rtpPacket(1, 0, 0xa, 1)
		phone.send(active.A.RTP, p) // traffic restarts the idle timeout
		remote.expect(p, active.B.RTP)
		time.Sleep(idle * 3 / 4)
		synctest.Wait()
		if _, idled := events.snapshot(); len(idled) != 0 {
			t.Fatalf("idle reported %d streams %v after a packet, want none yet", len(idled), idled[0].CallID())
		}
		time.Sleep(idle / 2)
		synctest.Wait()
		if _, idled := events.snapshot(); len(idled) != 1 || idled[0] != sa {
			t.Fatalf("idle reported %v, want the active stream only (the held one is not reaped)", callIDs(idled))
		}
		time.Sleep(3 * idle)
		synctest.Wait()
		if _, idled := events.snapshot(); len(idled) != 1 {
			t.Fatalf("idle reported %v, want the one report per silence", callIDs(idled))
		}
		held.Hold = false // resumed, and silent
		if err := r.UpdateStream(sh, held); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle + time.Second)
		synctest.Wait()
		if _, idled := events.snapshot(); len(idled) != 2 || idled[1] != sh {
			t.Fatalf("idle reported %v, want the resumed stream second", callIDs(idled))
		}
	})
}

func callIDs(ss []*Stream) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.CallID())
	}
	return out
}

// openFDs returns the open descriptors and what they are.
func openFDs(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := map[string]string{}
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			fds[e.Name()] = target
		}
	}
	return fds
}

// relayGoroutines counts goroutines running the relay's code.
func relayGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "mediarelay.(*Relay).startLocked.func") || strings.Contains(g, "mediarelay.(*Relay).housekeep") ||
			strings.Contains(g, "mediarelay.(*Relay).Run") {
			n++
		}
	}
	return n
}

func TestShutdownLeavesNothing(t *testing.T) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			// A table left by a crashed run: New must replace it.
			runStdin(t, "table inet sipcar {\n\tchain stale {\n\t\ttype filter hook input priority 0; policy drop;\n\t}\n}\n",
				"ip", "netns", "exec", l.sipcar, "nft", "-f", "-")
			spec := pairSpec(families[0])
			phone := l.listen(t, l.phone, spec.A.Peer.String())
			remote := l.listen(t, l.remote, spec.B.Peer.String())
			fds := openFDs(t)
			cfg := Config{PortMin: 20000, PortMax: 20999, Workers: 2, Mode: m.mode, FanInSend: m.send}
			var r *Relay
			var err error
			in(t, l.sipcar, func() { r, err = New(cfg) })
			if err != nil {
				t.Fatal(err)
			}
			tables := nftList(t, l)
			if strings.Contains(tables, "stale") || (m.mode != ModeFallback) != strings.Contains(tables, "tproxy") {
				t.Fatalf("nft ruleset after New:\n%s\nwant the stale table gone (fan-in: replaced by the tproxy rule)", tables)
			}
			for _, a := range []string{"198.18.0.1:20000", "198.18.0.1:20001", "198.51.100.1:20002", "198.51.100.1:20003"} {
				if _, err := r.Reserve("udp", ap(a)); err != nil { // left open: Close closes them
					t.Fatal(err)
				}
			}
			if _, err := r.AddStream(spec); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			p := rtpPacket(1, 0, 0xa, 1)
			phone.send(spec.A.RTP, p)
			remote.expect(p, spec.B.RTP)
			if n := relayGoroutines(); n != 3 {
				t.Errorf("%d relay goroutines while running, want 3 (Run and two workers)", n)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}

			// A worker has called wg.Done when Close returns, but may not have returned from its
			// goroutine yet: let the scheduler finish it before counting.
			n := relayGoroutines()
			for i := 0; i < 1000 && n != 0; i++ {
				runtime.Gosched()
				n = relayGoroutines()
			}
			if n != 0 {
				t.Errorf("%d relay goroutines left after Run returned", n)
			}
			for fd, target := range openFDs(t) {
				if fds[fd] != target {
					t.Errorf("descriptor %s (%s) open after Close, not before New", fd, target)
				}
			}
			if tables := nftList(t, l); strings.Contains(tables, "sipcar") {
				t.Errorf("nft ruleset after Close still has the table:\n%s", tables)
			}
			if _, err := r.Reserve("udp", ap("198.18.0.1:20004")); err == nil {
				t.Error("Reserve after Close succeeded")
			}
			// The ports are free again.
			l.listen(t, l.sipcar, "198.18.0.1:20000")
			l.listen(t, l.sipcar, "198.51.100.1:20003")
		})
	}
}

func nftList(t *testing.T, l *lab) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", l.sipcar, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	return string(out)
}
