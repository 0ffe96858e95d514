package pinhole

import (
	"bytes"
	"encoding/json"
	"flag"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs (-want +got):\n%s", name, diff)
	}
}

func display(t *testing.T, s Snapshot) (serverMap, sessions string) {
	t.Helper()
	var a, b bytes.Buffer
	if err := s.WriteServerMap(&a); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteSessionTable(&b); err != nil {
		t.Fatal(err)
	}
	return a.String(), b.String()
}

// TestCanonicalScenario plays DESIGN.md's canonical scenario (source NAT, client A 192.168.1.1
// inside, sipcar public 1.1.1.10, proxy 1.1.1.1:5060, client B 1.1.1.2) against the server map,
// doing what the relay and the media relay do, and checks both displays.
func TestCanonicalScenario(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, _ := newTestMap(t, Config{
			Inside: Addrs{IPv4: netip.MustParseAddr("192.168.1.254")},
			Public: Addrs{IPv4: netip.MustParseAddr("1.1.1.10")},
			// Ranges of two slots and a fixed random source give the scenario's ports.
			SignalingPorts: PortRange{2222, 2223},
			MediaPorts:     PortRange{3334, 3337},
			Rand:           rand.New(zeroSource{}),
		})
		const callID = "a84b4c76e66710@192.168.1.1"
		proxy := ap("1.1.1.1:5060")

		// 1. A's INVITE leaves from 1.1.1.10:2222 with its SDP at 1.1.1.10:3334.
		sigA, err := m.Signaling(Inside, "udp", ap("192.168.1.1:2000"), callID)
		if err != nil {
			t.Fatal(err)
		}
		tx := m.Begin(callID, netip.MustParseAddr("192.168.1.1"))
		pa, err := tx.Media(MediaRequest{From: Inside, RTP: ap("192.168.1.1:3000"), RTCP: ap("192.168.1.1:3001")})
		if err != nil || tx.Commit() != nil {
			t.Fatal(err)
		}
		if sigA.Address() != ap("1.1.1.10:2222") || pa != (Pair{RTP: ap("1.1.1.10:3334"), RTCPPort: 3335}) {
			t.Fatalf("step 1 bindings %v %+v", sigA.Address(), pa)
		}
		sigA.SetPeer(proxy)
		sigA.Sent(812, m.Now())
		serverMap, sessions := display(t, m.Snapshot())
		golden(t, "canonical_step1_server_map.txt", []byte(serverMap))
		golden(t, "canonical_step1_session_table.txt", []byte(sessions))
		// The lines DESIGN.md gives, verbatim.
		for _, want := range []string{
			"Type: ALG, ANY -> 1.1.1.10:2222[192.168.1.1:2000], Protocol: udp(Appro: sip), Left-Time: 00:02:00\n",
			"Type: ALG, ANY -> 1.1.1.10:3334[192.168.1.1:3000], Protocol: udp(Appro: sip-rtp), Left-Time: 00:00:50\n",
			"Type: ALG, ANY -> 1.1.1.10:3335[192.168.1.1:3001], Protocol: udp(Appro: sip-rtcp), Left-Time: 00:00:50\n",
		} {
			if !strings.Contains(serverMap, want) {
				t.Errorf("server map lacks %q", want)
			}
		}
		if want := "sip  192.168.1.1:2000[1.1.1.10:2222] +-> 1.1.1.1:5060"; !strings.HasPrefix(sessions, want) {
			t.Errorf("session table %q, want it to start %q", sessions, want)
		}

		// 2. 180 Ringing reaches 1.1.1.10:2222 and goes back to A.
		time.Sleep(2 * time.Second)
		if b, ok := m.Resolve(Outside, ap("1.1.1.10:2222")); !ok || b.ForwardTo() != ap("192.168.1.1:2000") {
			t.Fatalf("180 Ringing: Resolve = %v, %v", b, ok)
		}
		sigA.Received(420, m.Now())
		m.TouchCall(callID)

		// 3. 200 OK with B's SDP (1.1.1.2:4000) goes to A with sipcar's inside pair; B's Contact
		// 1.1.1.2:3000 gets a binding on the inside.
		time.Sleep(3 * time.Second)
		sigA.Received(910, m.Now())
		sigB, err := m.Signaling(Outside, "udp", ap("1.1.1.2:3000"), callID)
		if err != nil {
			t.Fatal(err)
		}
		tx = m.Begin(callID, netip.Addr{})
		pb, err := tx.Media(MediaRequest{From: Outside, RTP: ap("1.1.1.2:4000"), RTCP: ap("1.1.1.2:4001")})
		if err != nil || tx.Commit() != nil {
			t.Fatal(err)
		}
		if pb != (Pair{RTP: ap("192.168.1.254:3336"), RTCPPort: 3337}) || sigB.Address() != ap("192.168.1.254:2223") {
			t.Fatalf("step 3 bindings %v %+v", sigB.Address(), pb)
		}

		// 4. ACK, then media both ways for 30 s (50 packets/s); RTCP every 5 s.
		sigA.Sent(380, m.Now())
		rtpA, rtcpA := m.LookupMedia(3334), m.LookupMedia(3335) // B sends here
		rtpB, rtcpB := m.LookupMedia(3336), m.LookupMedia(3337) // A sends here
		rtpA.SetPeer(ap("1.1.1.2:4000"))
		rtcpA.SetPeer(ap("1.1.1.2:4001"))
		rtpB.SetPeer(ap("192.168.1.1:3000"))
		rtcpB.SetPeer(ap("192.168.1.1:3001"))
		for i := range 1520 {
			time.Sleep(20 * time.Millisecond)
			now := m.Now()
			rtpB.Received(172, now) // A -> B: in at B's pair, out from A's
			rtpA.Sent(172, now)
			if i > 0 { // B's first packet came 20 ms later
				rtpA.Received(172, now)
				rtpB.Sent(172, now)
			}
			if i%250 == 0 {
				rtcpB.Received(72, now)
				rtcpA.Sent(72, now)
				rtcpA.Received(64, now)
				rtcpB.Sent(64, now)
			}
		}
		time.Sleep(15 * time.Second) // both muted: 15 s without media
		s := m.Snapshot()
		serverMap, sessions = display(t, s)
		golden(t, "canonical_step4_server_map.txt", []byte(serverMap))
		golden(t, "canonical_step4_session_table.txt", []byte(sessions))
		if want := "sip-rtp  192.168.1.1:3000[1.1.1.10:3334] --> 1.1.1.2:4000  pkts 1520/1519"; !strings.Contains(sessions, want) {
			t.Errorf("session table lacks %q:\n%s", want, sessions)
		}
		js, err := json.MarshalIndent(s, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "canonical_step4.json", append(js, '\n'))

		// 5. BYE and its 200 release the media; the sip bindings live on.
		m.ReleaseCall(callID, ReasonCallEnded)
		serverMap, sessions = display(t, m.Snapshot())
		golden(t, "canonical_step5_server_map.txt", []byte(serverMap))
		if strings.Contains(serverMap, "sip-rtp") || strings.Contains(sessions, "sip-rtp") {
			t.Errorf("media left after BYE:\n%s%s", serverMap, sessions)
		}
	})
}

func TestJSONFields(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, _ := newTestMap(t, Config{})
		tx := m.Begin("c", netip.Addr{})
		tx.Media(MediaRequest{From: Inside, RTP: ap("[2001:db8:a::10]:3000"), Held: true})
		tx.Commit()
		js, err := json.Marshal(m.Snapshot())
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Time     string `json:"time"`
			Bindings []map[string]any
		}
		if err := json.Unmarshal(js, &got); err != nil {
			t.Fatal(err)
		}
		if _, err := time.Parse(time.RFC3339, got.Time); err != nil || len(got.Bindings) != 2 {
			t.Fatalf("time %q (%v), %d bindings", got.Time, err, len(got.Bindings))
		}
		e := got.Bindings[0]
		want := map[string]any{
			"type": "sip-rtp", "protocol": "udp", "transport": "udp", "faces": "outside",
			"address": e["address"], "forward_to": "[2001:db8:a::10]:3000", "peer": nil,
			"call_id": "c", "rtcp_mux": false, "held": true, "created": e["created"],
			"last_traffic": nil, "left_seconds": nil,
			"packets_sent": 0.0, "packets_received": 0.0, "bytes_sent": 0.0, "bytes_received": 0.0,
		}
		if diff := cmp.Diff(want, e); diff != "" {
			t.Errorf("JSON entry (-want +got):\n%s", diff)
		}
		if a, _ := e["address"].(string); !strings.HasPrefix(a, "[2001:db8:b::1]:") {
			t.Errorf("address %q, want sipcar's public IPv6 address", a)
		}
	})
}
