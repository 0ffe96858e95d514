package integration

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestCallEnds checks that every way a call ends releases its media: CANCEL before the answer,
// a rejection (486), and BYE after a hold and a resume by re-INVITE. Each case first sees the
// call's media bindings in the server map, so that "none left" means they were released.
func TestCallEnds(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		testCallRefused(t, "uas_cancel.xml", "uac_cancel.xml", "CANCEL and 487")
	})
	t.Run("busy", func(t *testing.T) {
		t.Parallel()
		testCallRefused(t, "uas_busy.xml", "uac_busy.xml", "486 Busy Here")
	})
	t.Run("hold-resume", func(t *testing.T) {
		t.Parallel()
		testHoldResume(t)
	})
}

// testCallRefused runs a call that never gets answered: while it rings, the INVITE's media has
// its pair, and the pair reserved for the answer faces the phone standing for nobody yet; after
// the final response, nothing.
func testCallRefused(t *testing.T, uas, uac, ending string) {
	l := newUpstreamLab(newTestbed(t))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: uas, local: pbxAddr.String()})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: uac, local: phoneAddr.String(), remote: publicAddr.String() + ":5060"})

	car.waitMap(t, 10*time.Second, "the ringing call's media pair toward the phone and its answer's reserved pair", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		offer, answer := 0, 0
		for _, e := range rtp {
			switch {
			case e.ForwardTo == netip.AddrPortFrom(phoneAddr, 6000) && e.Faces == "inside":
				offer++
			case !e.ForwardTo.IsValid() && e.Faces == "outside":
				answer++
			}
		}
		return len(rtp) == 2 && len(m.of("sip-rtcp")) == 2 && offer == 1 && answer == 1
	})
	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, ending)
}

// testHoldResume holds a call with a=sendonly and resumes it with a=sendrecv: the streams show
// as held, keep their relay ports throughout, carry media again after the resume, and are
// released by the BYE.
func testHoldResume(t *testing.T) {
	l := newUpstreamLab(newTestbed(t))
	pbx := l.sipp(l.pbx, "pbx", sippOpts{scenario: "uas_hold.xml", local: pbxAddr.String(), echo: true})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp")...)
	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uac_hold.xml", local: phoneAddr.String(),
		remote: publicAddr.String() + ":5060", rtpPcap: true})

	addrs := func(m serverMap) []netip.AddrPort {
		var as []netip.AddrPort
		for _, e := range m.media() {
			as = append(as, e.Address)
		}
		slices.SortFunc(as, func(a, b netip.AddrPort) int { return a.Compare(b) })
		return as
	}
	held := func(m serverMap) bool {
		for _, e := range m.of("sip-rtp") {
			if e.Held {
				return true
			}
		}
		return false
	}
	received := func(m serverMap) map[netip.AddrPort]uint64 {
		r := make(map[netip.AddrPort]uint64)
		for _, e := range m.of("sip-rtp") {
			r[e.Address] = e.PacketsReceived
		}
		return r
	}

	talking := car.waitMap(t, 15*time.Second, "media both ways before the hold", func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		return len(rtp) == 2 && !held(m) && rtp[0].PacketsReceived > 0 && rtp[1].PacketsReceived > 0
	})
	onHold := car.waitMap(t, 15*time.Second, "a held sip-rtp binding after the re-INVITE with a=sendonly", held)
	if got, want := addrs(onHold), addrs(talking); !slices.Equal(got, want) {
		t.Errorf("the hold re-INVITE moved the media: relay ports %v, before %v", got, want)
	}
	before := received(onHold)
	resumed := car.waitMap(t, 15*time.Second, "media both ways again after the re-INVITE with a=sendrecv", func(m serverMap) bool {
		if held(m) || len(m.of("sip-rtp")) != 2 {
			return false
		}
		for a, n := range received(m) {
			if n <= before[a] {
				return false
			}
		}
		return true
	})
	if got, want := addrs(resumed), addrs(talking); !slices.Equal(got, want) {
		t.Errorf("the resume re-INVITE moved the media: relay ports %v, before %v", got, want)
	}
	phone.succeeded(t, 30*time.Second, 1)
	pbx.succeeded(t, 10*time.Second, 1)
	car.waitNoMedia(t, "BYE")
}
