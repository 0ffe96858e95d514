package mediarelay

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestLatchOnRealSourceBehindNAT(t *testing.T) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			l.natRemote(t)
			r := l.startRelay(t, m, Config{})
			f := families[0]
			spec := pairSpec(f)
			spec.B.Peer = ap("203.0.113.2:4000")                // what the remote phone's SDP says: its home address
			spec.B.Signal = netip.MustParseAddr("198.51.100.2") // its SIP came from its NAT's address
			phone := l.listen(t, l.phone, spec.A.Peer.String())
			remote := l.listen(t, l.remote, "203.0.113.2:4000")
			intruder := l.listen(t, l.remote, "198.51.100.2:5555")
			s := addStream(t, r, spec)

			// Symmetric RTP: the NATed phone speaks first, the relay learns its public source.
			p1 := rtpPacket(1, 0, 0xb, 1)
			remote.send(spec.B.RTP, p1)
			phone.expect(p1, spec.A.RTP)
			p2 := rtpPacket(1, 0, 0xa, 2)
			phone.send(spec.A.RTP, p2)
			remote.expect(p2, spec.B.RTP) // through the NAT, back to its home address

			st := s.Stats()
			natted := st.B.Peer
			if natted.Addr() != netip.MustParseAddr("198.51.100.2") || natted.Port() < 41000 || natted.Port() > 41099 {
				t.Fatalf("leg B latched on %v, want 198.51.100.2 with a port the NAT chose (41000-41099)", natted)
			}

			// Another source on the same relay port: dropped, the latched peer still gets through.
			intruder.send(spec.B.RTP, rtpPacket(2, 160, 0xbad, 3))
			p4 := rtpPacket(2, 160, 0xb, 4)
			remote.send(spec.B.RTP, p4)
			phone.expect(p4, spec.A.RTP)
			st = s.Stats()
			if st.B.Bleed != 1 || st.B.Peer != natted {
				t.Errorf("after the intruder: bleed %d, peer %v; want 1, %v", st.B.Bleed, st.B.Peer, natted)
			}
			if got := r.Counters().Dropped[DropBleed]; got != 1 {
				t.Errorf("Counters().Dropped[bleed] = %d, want 1", got)
			}
		})
	}
}

func TestStrictLatchAcceptsOnlySDPAddress(t *testing.T) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			r := l.startRelay(t, m, Config{})
			f := families[0]
			spec := pairSpec(f)
			spec.B.Latch = LatchStrict
			phone := l.listen(t, l.phone, spec.A.Peer.String())
			remote := l.listen(t, l.remote, spec.B.Peer.String())
			other := l.listen(t, l.remote, "198.51.100.2:40500")
			s := addStream(t, r, spec)

			other.send(spec.B.RTP, rtpPacket(1, 0, 0xbad, 1)) // first, but not the SDP address
			p := rtpPacket(1, 0, 0xb, 2)
			remote.send(spec.B.RTP, p)
			phone.expect(p, spec.A.RTP)
			st := s.Stats()
			if st.B.Bleed != 1 || st.B.Peer != spec.B.Peer || !st.B.Final {
				t.Errorf("bleed %d, peer %v final %v; want 1, %v final", st.B.Bleed, st.B.Peer, st.B.Final, spec.B.Peer)
			}
		})
	}
}

// eventLog records what the relay reports.
type eventLog struct {
	mu      sync.Mutex
	latched []string
	idle    []*Stream
	traffic []StreamStats
}

func (e *eventLog) Latched(s *Stream, leg Leg, rtcp bool, peer netip.AddrPort) {
	e.mu.Lock()
	defer e.mu.Unlock()
	kind := "rtp"
	if rtcp {
		kind = "rtcp"
	}
	e.latched = append(e.latched, s.CallID()+" "+leg.String()+" "+kind+" "+peer.String())
}

func (e *eventLog) Idle(s *Stream, idle time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.idle = append(e.idle, s)
}

func (e *eventLog) Traffic(_ *Stream, st StreamStats) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.traffic = append(e.traffic, st)
}

func (e *eventLog) trafficReports() []StreamStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]StreamStats(nil), e.traffic...)
}

func (e *eventLog) snapshot() ([]string, []*Stream) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.latched...), append([]*Stream(nil), e.idle...)
}

// inBubble runs fn in a synctest bubble with the relay's housekeeping in it. The packet
// workers run outside the bubble (they block in epoll_wait, which a bubble cannot wait
// out), so the bubble's fake clock drives the latch windows and idle timeouts alone.
func inBubble(t *testing.T, r *Relay, fn func(t *testing.T)) {
	if err := r.start(nil); err != nil {
		t.Fatal(err)
	}
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.housekeep(ctx)
		}()
		fn(t)
		cancel()
		<-done
	})
}

func TestLatchWindow(t *testing.T) {
	const window = 3 * time.Second
	setup := func(t *testing.T, events Events) (*lab, *Relay, StreamSpec, *peer, *peer, *peer) {
		l := newLab(t)
		r := l.newRelay(t, relayModes[0], Config{LatchWindow: window, Events: events})
		spec := pairSpec(families[0])
		phone := l.listen(t, l.phone, spec.A.Peer.String())
		sdp := l.listen(t, l.remote, spec.B.Peer.String())
		other := l.listen(t, l.remote, "198.51.100.2:40100")
		return l, r, spec, phone, sdp, other
	}

	t.Run("SDP address takes over within the window", func(t *testing.T) {
		events := &eventLog{}
		_, r, spec, phone, sdp, other := setup(t, events)
		s := addStream(t, r, spec)
		inBubble(t, r, func(t *testing.T) {
			p1 := rtpPacket(1, 0, 0xb, 1)
			other.send(spec.B.RTP, p1)
			phone.expect(p1, spec.A.RTP)
			p2 := rtpPacket(1, 0, 0xa, 2)
			phone.send(spec.A.RTP, p2)
			other.expect(p2, spec.B.RTP) // tentatively latched on the first source

			time.Sleep(window / 2)
			p3 := rtpPacket(2, 160, 0xb, 3)
			sdp.send(spec.B.RTP, p3)
			phone.expect(p3, spec.A.RTP)
			p4 := rtpPacket(2, 160, 0xa, 4)
			phone.send(spec.A.RTP, p4)
			sdp.expect(p4, spec.B.RTP) // the SDP address took over

			other.send(spec.B.RTP, rtpPacket(3, 320, 0xb, 5))
			p6 := rtpPacket(3, 320, 0xb, 6)
			sdp.send(spec.B.RTP, p6)
			phone.expect(p6, spec.A.RTP) // the first source is now bleed
			time.Sleep(time.Second)
			synctest.Wait()
			st := s.Stats()
			if st.B.Peer != spec.B.Peer || !st.B.Final || st.B.Bleed != 1 {
				t.Errorf("leg B peer %v final %v bleed %d; want %v final, 1", st.B.Peer, st.B.Final, st.B.Bleed, spec.B.Peer)
			}
			latched, _ := events.snapshot()
			// One sweep saw both legs latched (leg A first), a later one the SDP address.
			want := []string{"call-1@phone A rtp 198.18.0.2:30000", "call-1@phone B rtp 198.51.100.2:40100", "call-1@phone B rtp 198.51.100.2:40000"}
			if !equalStrings(latched, want) {
				t.Errorf("Latched events %q, want %q", latched, want)
			}
		})
	})

	t.Run("first source is final after the window", func(t *testing.T) {
		_, r, spec, phone, sdp, other := setup(t, nil)
		s := addStream(t, r, spec)
		inBubble(t, r, func(t *testing.T) {
			p1 := rtpPacket(1, 0, 0xb, 1)
			other.send(spec.B.RTP, p1)
			phone.expect(p1, spec.A.RTP)
			if st := s.Stats(); st.B.Final {
				t.Fatalf("leg B final right after its first packet")
			}
			time.Sleep(window + time.Second)
			synctest.Wait()
			if st := s.Stats(); st.B.Peer != other.addr || !st.B.Final {
				t.Fatalf("after the window leg B peer %v final %v, want %v final", st.B.Peer, st.B.Final, other.addr)
			}
			sdp.send(spec.B.RTP, rtpPacket(2, 160, 0xb, 2)) // the SDP address, too late
			p3 := rtpPacket(3, 320, 0xb, 3)
			other.send(spec.B.RTP, p3)
			phone.expect(p3, spec.A.RTP)
			if st := s.Stats(); st.B.Bleed != 1 {
				t.Errorf("bleed %d, want 1 (the SDP address after the window)", st.B.Bleed)
			}
		})
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// While a leg learns its peer, a source that signalling does not name gets nothing through: an
// attacker spraying the relay port before the peer's first packet is dropped, before and after
// the peer latched.
func TestLearningDropsUnsignalledSources(t *testing.T) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			run(t, "ip", "-n", l.remote, "addr", "add", "198.51.100.3/24", "dev", "rm0")
			r := l.startRelay(t, m, Config{})
			spec := pairSpec(families[0])
			spec.B.Signal = spec.B.Peer.Addr()
			phone := l.listen(t, l.phone, spec.A.Peer.String())
			remote := l.listen(t, l.remote, spec.B.Peer.String())
			attacker := l.listen(t, l.remote, "198.51.100.3:6666")
			s := addStream(t, r, spec)

			for i := range 20 {
				attacker.send(spec.B.RTP, rtpPacket(uint16(i), 0, 0xbad, 1))
			}
			p := rtpPacket(1, 0, 0xb, 2)
			remote.send(spec.B.RTP, p)
			phone.expect(p, spec.A.RTP)
			for i := range 20 {
				attacker.send(spec.B.RTP, rtpPacket(uint16(100+i), 0, 0xbad, 1))
			}
			q := rtpPacket(2, 160, 0xb, 3)
			remote.send(spec.B.RTP, q)
			phone.expect(q, spec.A.RTP) // the next thing the phone gets: nothing of the attacker's
			st := s.Stats()
			if st.B.Peer != spec.B.Peer || !st.B.Final || st.B.Bleed != 40 {
				t.Errorf("leg B peer %v final %v bleed %d; want %v final, 40 dropped", st.B.Peer, st.B.Final, st.B.Bleed, spec.B.Peer)
			}
		})
	}
}

// A peer whose media leaves from another address than its SDP and its signalling say still gets
// audio: after the learning window its source is latched.
func TestLearningAcceptsOtherSourceAfterWindow(t *testing.T) {
	const window = time.Second
	l := newLab(t)
	run(t, "ip", "-n", l.remote, "addr", "add", "198.51.100.3/24", "dev", "rm0")
	r := l.startRelay(t, relayModes[0], Config{LatchWindow: window})
	spec := pairSpec(families[0])
	spec.B.Signal = spec.B.Peer.Addr()
	phone := l.listen(t, l.phone, spec.A.Peer.String())
	media := l.listen(t, l.remote, "198.51.100.3:7000") // a media server beside the signalling one
	s := addStream(t, r, spec)

	media.send(spec.B.RTP, rtpPacket(1, 0, 0xb, 1)) // learning: held back
	time.Sleep(window + window/2)
	p := rtpPacket(2, 160, 0xb, 2)
	media.send(spec.B.RTP, p)
	phone.expect(p, spec.A.RTP) // the first packet the phone gets is the one after the window
	back := rtpPacket(1, 0, 0xa, 3)
	phone.send(spec.A.RTP, back)
	media.expect(back, spec.B.RTP)
	if st := s.Stats(); st.B.Peer != media.addr || st.B.Bleed != 1 {
		t.Errorf("leg B peer %v bleed %d; want %v, 1 (the packet within the window)", st.B.Peer, st.B.Bleed, media.addr)
	}
}

// The relay pushes a stream's counters after packets, once a sweep, and stays silent while
// nothing arrives.
func TestTrafficPushed(t *testing.T) {
	events := &eventLog{}
	l := newLab(t)
	r := l.newRelay(t, relayModes[0], Config{Events: events})
	spec := pairSpec(families[0])
	phone := l.listen(t, l.phone, spec.A.Peer.String())
	remote := l.listen(t, l.remote, spec.B.Peer.String())
	addStream(t, r, spec)
	inBubble(t, r, func(t *testing.T) {
		time.Sleep(time.Second)
		synctest.Wait()
		if n := len(events.trafficReports()); n != 0 {
			t.Fatalf("%d traffic reports before any packet", n)
		}
		for i := range 3 {
			p := rtpPacket(uint16(i), uint32(160*i), 0xb, byte(i))
			remote.send(spec.B.RTP, p)
			phone.expect(p, spec.A.RTP)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		reports := events.trafficReports()
		if len(reports) == 0 || reports[len(reports)-1].B.RTP.Packets != 3 {
			t.Fatalf("traffic reports %+v; want the last one with 3 RTP packets on leg B", reports)
		}
		n := len(reports)
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := len(events.trafficReports()); got != n {
			t.Errorf("%d more traffic reports while nothing arrived", got-n)
		}
	})
}
