package rewrite

import (
	"net/netip"
	"testing"
)

// The canonical scenario of DESIGN.md (the Huawei source NAT walk-through): client A
// 192.168.1.1 inside calls client B 1.1.1.2 through the proxy 1.1.1.1; sipcar's public address
// is 1.1.1.10 and its inside-facing address 192.168.1.254.
func TestCanonicalSourceNAT(t *testing.T) {
	nat := newNAT()
	ap := netip.MustParseAddrPort
	runScenario(t, "canonical", nat, []step{
		{name: "01-invite", from: Inside, check: func(t *testing.T, r *Result) {
			// Via and Contact share A's one signaling binding; the audio stream gets a pair.
			if got := nat.fwd[sigKey{Inside, ap("192.168.1.1:2000")}]; got != ap("1.1.1.10:2222") {
				t.Errorf("A's signaling binding = %v, want 1.1.1.10:2222", got)
			}
			wantStreams(t, r, Stream{Index: 0, Media: "audio", Proto: "RTP/AVP", RTP: ap("192.168.1.1:3000"),
				RTCP: ap("192.168.1.1:3001"), Disposition: Relayed,
				Binding: MediaBinding{RTP: ap("1.1.1.10:3334"), RTCPPort: 3335}})
		}},
		{name: "02-180", from: Outside},
		{name: "03-200", from: Outside, check: func(t *testing.T, r *Result) {
			wantStreams(t, r, Stream{Index: 0, Media: "audio", Proto: "RTP/AVP", RTP: ap("1.1.1.2:4000"),
				RTCP: ap("1.1.1.2:4001"), Disposition: Relayed,
				Binding: MediaBinding{RTP: ap("192.168.1.254:5334"), RTCPPort: 5335}})
		}},
		{name: "04-ack", from: Inside, check: func(t *testing.T, r *Result) {
			if len(nat.fwd) != 1 {
				t.Errorf("the ACK made a new signaling binding: %v", nat.fwd)
			}
		}},
		{name: "05-bye", from: Outside},
		{name: "06-bye-200", from: Outside},
	})
}

func wantStreams(t *testing.T, r *Result, want ...Stream) {
	t.Helper()
	if len(r.Streams) != len(want) {
		t.Fatalf("%d streams, want %d: %+v", len(r.Streams), len(want), r.Streams)
	}
	for i := range want {
		if r.Streams[i] != want[i] {
			t.Errorf("stream %d:\n got %+v\nwant %+v", i, r.Streams[i], want[i])
		}
	}
}
