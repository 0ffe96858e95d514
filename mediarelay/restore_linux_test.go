package mediarelay

import (
	"testing"
)

// A stream restored by a standby with its legs latched: the phone's first packet goes to the
// latched source, not to the SDP address, and the SDP address, which did not latch the port,
// gets nothing through.
func TestLatchRestored(t *testing.T) {
	for _, m := range relayModes {
		t.Run(m.name, func(t *testing.T) {
			l := newLab(t)
			r := l.startRelay(t, m, Config{})
			f := families[0]
			spec := pairSpec(f)
			phone := l.listen(t, l.phone, spec.A.Peer.String())
			sdp := l.listen(t, l.remote, spec.B.Peer.String())
			latched := l.listen(t, l.remote, f.at(f.remote, 40500).String()) // where the remote's media came from
			s := addStream(t, r, spec)
			if err := r.Latch(s, LegB, false, latched.addr); err != nil {
				t.Fatal(err)
			}
			if err := r.Latch(s, LegA, true, spec.A.PeerRTCP); err == nil {
				t.Error("Latch on an invalid peer succeeded")
			}

			p1 := rtpPacket(1, 0, 0xa, 1)
			phone.send(spec.A.RTP, p1)
			latched.expect(p1, spec.B.RTP) // to the latched source before it sent anything
			sdp.send(spec.B.RTP, rtpPacket(1, 0, 0xbad, 2))
			p3 := rtpPacket(2, 160, 0xb, 3)
			latched.send(spec.B.RTP, p3)
			phone.expect(p3, spec.A.RTP) // the SDP address's packet was dropped: this is the next
			st := s.Stats()
			if st.B.Peer != latched.addr || !st.B.Final || st.B.Bleed != 1 {
				t.Errorf("leg B: peer %v final %v bleed %d; want %v final, 1 bleed", st.B.Peer, st.B.Final, st.B.Bleed, latched.addr)
			}
			r.RemoveStream(s)
			if err := r.Latch(s, LegB, false, latched.addr); err == nil {
				t.Error("Latch of a removed stream succeeded")
			}
		})
	}
}
