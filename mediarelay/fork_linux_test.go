package mediarelay

import (
	"testing"
)

// The dialogs of a forked call answer one offer: their streams share the offer's relay ports on
// leg B, and each dialog's media reaches the caller through its own leg A.
func TestForkedStreamsShareOfferPort(t *testing.T) {
	forEachMode(t, func(t *testing.T, m relayMode, f ipFamily) {
		l := newLab(t)
		r := l.startRelay(t, m, Config{})
		fork1 := StreamSpec{
			CallID: "forked",
			A:      LegSpec{RTP: f.at(f.sipcarIn, 20000), RTCP: f.at(f.sipcarIn, 20001), Peer: f.at(f.phone, 30000)},
			B:      LegSpec{RTP: f.at(f.sipcarOut, 20002), RTCP: f.at(f.sipcarOut, 20003), Peer: f.at(f.remote, 40000), Shared: true},
		}
		fork2 := fork1
		fork2.A.RTP, fork2.A.RTCP = f.at(f.sipcarIn, 20004), f.at(f.sipcarIn, 20005)
		fork2.B.Peer = f.at(f.remote, 40010)

		phone := l.listen(t, l.phone, fork1.A.Peer.String())
		phoneRTCP := l.listen(t, l.phone, f.at(f.phone, 30001).String())
		callee1 := l.listen(t, l.remote, fork1.B.Peer.String())
		callee2 := l.listen(t, l.remote, fork2.B.Peer.String())
		callee2RTCP := l.listen(t, l.remote, f.at(f.remote, 40011).String())

		s1 := addStream(t, r, fork1)
		reserve(t, r, StreamSpec{A: fork2.A, B: LegSpec{RTP: f.at(f.sipcarOut, 20006), RTCP: f.at(f.sipcarOut, 20007)}})
		s2, err := r.AddStream(fork2)
		if err != nil {
			t.Fatalf("second fork on the shared port: %v", err)
		}

		// Early media of both forks reaches the caller, each from its own dialog's port.
		e1, e2 := rtpPacket(1, 0, 0xb1, 1), rtpPacket(1, 0, 0xb2, 2)
		callee1.send(fork1.B.RTP, e1)
		phone.expect(e1, fork1.A.RTP)
		callee2.send(fork2.B.RTP, e2)
		phone.expect(e2, fork2.A.RTP)
		// The caller's media to each dialog leaves from the one offer port.
		a1, a2 := rtpPacket(1, 0, 0xa, 3), rtpPacket(2, 160, 0xa, 4)
		phone.send(fork1.A.RTP, a1)
		callee1.expect(a1, fork1.B.RTP)
		phone.send(fork2.A.RTP, a2)
		callee2.expect(a2, fork2.B.RTP)
		rr := rtcpPacket(0xb2, 5)
		callee2RTCP.send(fork2.B.RTCP, rr)
		phoneRTCP.expect(rr, fork2.A.RTCP)

		st1, st2 := s1.Stats(), s2.Stats()
		if st1.B.RTP.Packets != 1 || st2.B.RTP.Packets != 1 || st2.B.RTCP.Packets != 1 || st1.B.Peer != callee1.addr || st2.B.Peer != callee2.addr {
			t.Errorf("fork 1: %d packets from %v; fork 2: %d packets, %d rtcp from %v", st1.B.RTP.Packets, st1.B.Peer,
				st2.B.RTP.Packets, st2.B.RTCP.Packets, st2.B.Peer)
		}

		// A stream that does not share may not use the port.
		other := fork2
		other.A.RTP, other.A.RTCP = f.at(f.sipcarIn, 20008), f.at(f.sipcarIn, 20009)
		other.B.Shared = false
		reserve(t, r, StreamSpec{A: other.A, B: LegSpec{RTP: f.at(f.sipcarOut, 20010), RTCP: f.at(f.sipcarOut, 20011)}})
		if _, err := r.AddStream(other); err == nil {
			t.Errorf("an unshared stream was added on a shared port")
		}

		// The 2xx settles the call on fork 2: fork 1's stream goes; its callee is now bleed.
		r.RemoveStream(s1)
		callee1.send(fork1.B.RTP, rtpPacket(2, 160, 0xb1, 6))
		e3 := rtpPacket(2, 160, 0xb2, 7)
		callee2.send(fork2.B.RTP, e3)
		phone.expect(e3, fork2.A.RTP)
		if st := s2.Stats(); st.B.Bleed != 1 || st.B.RTP.Packets != 2 {
			t.Errorf("after fork 1 went: bleed %d, packets %d; want 1, 2", st.B.Bleed, st.B.RTP.Packets)
		}
	})
}
