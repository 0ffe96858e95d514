package integration

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// TestForkedCall is a call that a forking proxy sent to two phones (RFC 3261 section 16.7): the
// caller gets a 183 with SDP from each fork (two early dialogs, two To tags), then a 200 from the
// second. The PBX side is the forking proxy, played by the test so that each fork's media has a
// socket of its own. sipcar must give each early dialog media of its own (both forks' early media
// reach the caller, each from the port its own 183 named, and the caller's media reaches each
// fork), keep only the answered dialog's once the 200 comes, give a late 200 of the other fork
// media of its own until its BYE, and leave nothing after the last BYE.
func TestForkedCall(t *testing.T) {
	for _, mode := range []string{"fallback", "fanin"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testForkedCall(t, mode)
		})
	}
}

func testForkedCall(t *testing.T, mediaMode string) {
	l := newGoLab(t, "SIPCAR_MEDIA_MODE="+mediaMode)
	car, phone, phoneMedia := l.sipcar, l.phoneSIP, l.phoneRTP
	fork1, fork2 := l.pbxRTP, l.udpPeer(l.pbx, netip.AddrPortFrom(pbxAddr, 8100))
	call := placeGoCall(t, phone, l.pbxSIP, "forked", offer(phoneMedia.addr))
	offered := call.offered
	withTag := func(code int, tag string) func(*sipMsg) bool {
		return func(m *sipMsg) bool { return m.status() == code && toTag(m) == tag }
	}

	// Both forks ring with early media.
	var early [2]netip.AddrPort
	for i, f := range []*udpPeer{fork1, fork2} {
		tag := "fork" + strconv.Itoa(i+1)
		call.respond(183, "Session Progress", tag, offer(f.addr))
		r := phone.recv(t, 5*time.Second, "the 183 of "+tag, withTag(183, tag))
		var err error
		if early[i], err = r.media(); err != nil {
			t.Fatal(err)
		}
	}
	if early[0] == early[1] || early[0].Addr() != publicAddr || early[1].Addr() != publicAddr {
		t.Fatalf("the forks' 183s reached the caller with media at %v and %v; want two ports of sipcar's public address", early[0], early[1])
	}
	if m := car.mustServerMap(t); len(m.of("sip-rtp")) != 3 {
		t.Errorf("two early dialogs: %d sip-rtp bindings, want 3 (the offer's and one per fork)\n%v", len(m.of("sip-rtp")), m)
	}

	// Each fork's early media reaches the caller from its own dialog's port, and the caller's
	// media to each dialog's port reaches that fork, from the one port the offer named.
	for i, f := range []*udpPeer{fork1, fork2} {
		ssrc := uint32(0xf0 + i)
		f.send(t, offered, rtp(ssrc, 1))
		expectRTP(t, phoneMedia, ssrc, early[i], "fork "+strconv.Itoa(i+1)+"'s early media at the caller")
		phoneMedia.send(t, early[i], rtp(0xca11e0+uint32(i), 1))
		expectRTP(t, f, 0xca11e0+uint32(i), offered, "the caller's media at fork "+strconv.Itoa(i+1))
	}

	// Fork 2 answers: the call is settled on its dialog, fork 1's pair goes.
	call.respond(200, "OK", "fork2", offer(fork2.addr))
	ok := phone.recv(t, 5*time.Second, "the 200 OK of fork2", withTag(200, "fork2"))
	if answered, err := ok.media(); err != nil || answered != early[1] {
		t.Errorf("the 200 of fork 2 offers media at %v (%v); want its 183's %v", answered, err, early[1])
	}
	m := car.waitMap(t, 5*time.Second, "fork 1's pair released once fork 2 answered", func(m serverMap) bool {
		return len(m.of("sip-rtp")) == 2
	})
	for _, e := range m.media() {
		if e.Address.Port() == early[0].Port() {
			t.Errorf("fork 1's pair %v is still in the server map", e.Address)
		}
	}
	fork1.send(t, offered, rtp(0xf0, 2))
	fork2.send(t, offered, rtp(0xf1, 2))
	expectRTP(t, phoneMedia, 0xf1, early[1], "the answered fork's media at the caller")
	if src, ok := tryRTP(phoneMedia, 0xf0, 300*time.Millisecond); ok {
		t.Errorf("media of the fork that did not answer reached the caller from %v", src)
	}
	call.ack(ok)

	// A late 200 from fork 1 (both phones picked up): its dialog gets media of its own until the
	// caller's BYE ends it, and fork 2's call goes on.
	call.respond(200, "OK", "fork1", offer(fork1.addr))
	late := phone.recv(t, 5*time.Second, "the late 200 OK of fork1", withTag(200, "fork1"))
	lateMedia, err := late.media()
	if err != nil {
		t.Fatal(err)
	}
	if lateMedia == early[1] || lateMedia.Addr() != publicAddr {
		t.Errorf("the late 200 of fork 1 offers media at %v; want a pair of its own", lateMedia)
	}
	fork1.send(t, offered, rtp(0xf0, 3))
	expectRTP(t, phoneMedia, 0xf0, lateMedia, "the late fork's media at the caller")
	call.ack(late)
	call.bye(late)
	car.waitMap(t, 5*time.Second, "only fork 1's late pair released by its BYE", func(m serverMap) bool {
		return len(m.of("sip-rtp")) == 2
	})
	fork2.send(t, offered, rtp(0xf1, 4))
	expectRTP(t, phoneMedia, 0xf1, early[1], "the answered fork's media after the other dialog's BYE")
	phoneMedia.send(t, early[1], rtp(0xca11e1, 4))
	expectRTP(t, fork2, 0xca11e1, offered, "the caller's media at fork 2 after the other dialog's BYE")

	call.bye(ok)
	car.waitNoMedia(t, "the last dialog's BYE")
	car.checkLogClean(t)
}

// rtp is a minimal RTP packet (PCMA) of ssrc with sequence number seq.
func rtp(ssrc uint32, seq uint16) []byte {
	b := make([]byte, 12+160)
	b[0], b[1] = 0x80, 8
	binary.BigEndian.PutUint16(b[2:], seq)
	binary.BigEndian.PutUint32(b[4:], uint32(seq)*160)
	binary.BigEndian.PutUint32(b[8:], ssrc)
	return b
}

// expectRTP waits for an RTP packet of ssrc at p and fails the test unless it came from src.
func expectRTP(t *testing.T, p *udpPeer, ssrc uint32, src netip.AddrPort, what string) {
	t.Helper()
	got, ok := tryRTP(p, ssrc, 3*time.Second)
	if !ok {
		t.Fatalf("no RTP of ssrc %#x at %v: %s", ssrc, p.addr, what)
	}
	if got != src {
		t.Errorf("%s came from %v, want %v", what, got, src)
	}
}

// tryRTP returns the source of the next RTP packet of ssrc at p within timeout, skipping others.
func tryRTP(p *udpPeer, ssrc uint32, timeout time.Duration) (netip.AddrPort, bool) {
	buf := make([]byte, 2048)
	_ = p.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		n, src, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return netip.AddrPort{}, false
			}
			return netip.AddrPort{}, false
		}
		if n >= 12 && binary.BigEndian.Uint32(buf[8:12]) == ssrc {
			return netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), true
		}
	}
}
