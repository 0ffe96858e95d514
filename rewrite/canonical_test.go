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

// The other direction (destination NAT, sidecar mode): the PBX 172.18.0.2 sits in a docker
// network behind sipcar, published as 203.0.113.1; phone 203.0.113.50 outside registers, the PBX
// calls it, the phone answers and hangs up. The PBX sees the phone at sipcar's inside-facing
// binding 172.18.0.1:6222; the phone sees the PBX at the public binding 203.0.113.1:2222.
func TestCanonicalDestinationNAT(t *testing.T) {
	nat := newNAT()
	nat.insideNets = []netip.Prefix{netip.MustParsePrefix("172.18.0.0/16")}
	nat.insideAddr, nat.publicAddr = netip.MustParseAddr("172.18.0.1"), netip.MustParseAddr("203.0.113.1")
	nat.anchorOutside = true
	ap := netip.MustParseAddrPort
	phone, pbx := ap("203.0.113.50:5062"), ap("172.18.0.2:5060")
	runScenario(t, "dnat", nat, []step{
		{name: "01-register", from: Outside, check: func(t *testing.T, r *Result) {
			if got := nat.fwd[sigKey{Outside, phone}]; got != ap("172.18.0.1:6222") {
				t.Errorf("phone's binding = %v, want 172.18.0.1:6222", got)
			}
		}},
		{name: "02-register-200", from: Inside},
		{name: "03-invite", from: Inside, check: func(t *testing.T, r *Result) {
			if got := nat.fwd[sigKey{Inside, pbx}]; got != ap("203.0.113.1:2222") {
				t.Errorf("PBX's binding = %v, want 203.0.113.1:2222", got)
			}
			wantStreams(t, r, Stream{Media: "audio", Proto: "RTP/AVP", RTP: ap("172.18.0.2:10000"), RTCP: ap("172.18.0.2:10001"),
				Disposition: Relayed, Binding: MediaBinding{RTP: ap("203.0.113.1:3334"), RTCPPort: 3335}})
		}},
		{name: "04-200", from: Outside, check: func(t *testing.T, r *Result) {
			wantStreams(t, r, Stream{Media: "audio", Proto: "RTP/AVP", RTP: ap("203.0.113.50:40000"), RTCP: ap("203.0.113.50:40001"),
				Disposition: Relayed, Binding: MediaBinding{RTP: ap("172.18.0.1:5334"), RTCPPort: 5335}})
		}},
		{name: "05-bye", from: Outside},
	})
}
