package pinhole

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
)

// testQuality stands for the media relay's quality of a leg.
type testQuality struct {
	MOS float64 `json:"mos"`
}

func (q testQuality) String() string { return "mos 4.41" }

func TestQualityShown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, _ := newTestMap(t, Config{})
		tx := m.Begin("c", netip.Addr{})
		p, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.2:3000")})
		if err != nil || tx.Commit() != nil {
			t.Fatal(err)
		}
		b := m.LookupMedia(p.RTP.Port())
		b.Received(172, m.Now())
		b.SetQuality(testQuality{MOS: 4.41})
		s := m.Snapshot()
		_, sessions := display(t, s)
		if !strings.Contains(sessions, "pkts 0/1  bytes 0/172  mos 4.41\n") {
			t.Errorf("session table does not end the RTP line with the quality:\n%s", sessions)
		}
		js, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Bindings []struct {
				Type    string
				Quality *testQuality
			}
		}
		if err := json.Unmarshal(js, &got); err != nil {
			t.Fatal(err)
		}
		for _, e := range got.Bindings {
			if (e.Type == "sip-rtp") != (e.Quality != nil) || (e.Quality != nil && e.Quality.MOS != 4.41) {
				t.Errorf("%s binding has quality %+v in JSON; want it on the RTP binding only", e.Type, e.Quality)
			}
		}
		b.SetQuality(nil)
		if _, sessions = display(t, m.Snapshot()); strings.Contains(sessions, "mos") {
			t.Errorf("quality cleared, still shown:\n%s", sessions)
		}
	})
}
