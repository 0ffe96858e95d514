package relay

import (
	"net/netip"
	"testing"

	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

func parseMsg(t *testing.T, s string) *rewrite.Message {
	t.Helper()
	var m rewrite.Message
	if err := rewrite.Parse([]byte(s), &m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// A call whose initial INVITE came in from outside and goes back out (through an inside proxy)
// gets a call state per crossing, told apart by the party outside.
func TestPassOfHairpin(t *testing.T) {
	b := newLoopbed(t, nil)
	r := b.r
	alice, bob := netip.MustParseAddrPort("203.0.113.5:5060"), netip.MustParseAddrPort("203.0.113.6:5060")
	pbx := netip.MustParseAddrPort("127.0.0.2:5060")
	invite := parseMsg(t, "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK2\r\n"+
		"From: <sip:alice@x>;tag=a\r\nTo: <sip:bob@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
	ringing := parseMsg(t, "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK2\r\n"+
		"From: <sip:alice@x>;tag=a\r\nTo: <sip:bob@x>;tag=b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")

	// No call state yet, or a call placed from inside: one crossing.
	if k := r.calls.passOf("c", pinhole.Inside, pbx, bob, invite); k != "c" {
		t.Errorf("INVITE of an unknown call: key %q, want the Call-ID", k)
	}
	r.calls.mu.Lock()
	r.calls.calls["c"] = &callState{caller: pinhole.Inside, callerTag: "a"}
	r.calls.mu.Unlock()
	if k := r.calls.passOf("c", pinhole.Inside, pbx, bob, invite); k != "c" {
		t.Errorf("INVITE from inside of a call placed from inside: key %q, want the Call-ID", k)
	}

	// Placed from outside (alice), sent back out to bob: the second crossing.
	r.calls.mu.Lock()
	r.calls.calls["c"].caller = pinhole.Outside
	r.calls.mu.Unlock()
	k := r.calls.passOf("c", pinhole.Inside, pbx, bob, invite)
	if k == "c" {
		t.Fatalf("the INVITE going back out got the call's own key")
	}
	if got := r.calls.passOf("c", pinhole.Outside, bob, netip.AddrPort{}, ringing); got != k {
		t.Errorf("bob's 180: key %q, want %q", got, k)
	}
	if got := r.calls.passOf("c", pinhole.Outside, alice, netip.AddrPort{}, ringing); got != "c" {
		t.Errorf("a message from alice: key %q, want the Call-ID", got)
	}
	if got := r.calls.passOf("c", pinhole.Inside, pbx, alice, ringing); got != "c" {
		t.Errorf("the 180 going to alice: key %q, want the Call-ID", got)
	}
	if got := r.calls.passOf("c", pinhole.Inside, pbx, bob, invite); got != k {
		t.Errorf("a retransmitted INVITE to bob: key %q, want %q", got, k)
	}

	// Once the crossing's call ends, its key goes.
	r.calls.mu.Lock()
	r.calls.forgetPassLocked(k)
	r.calls.mu.Unlock()
	if got := r.calls.passOf("c", pinhole.Outside, bob, netip.AddrPort{}, ringing); got != "c" {
		t.Errorf("after the crossing ended: key %q, want the Call-ID", got)
	}
	r.calls.mu.Lock()
	n, m := len(r.calls.hairpins), len(r.calls.hairpinOf)
	r.calls.mu.Unlock()
	if n != 0 || m != 0 {
		t.Errorf("%d hairpin entries and %d reverse entries left", n, m)
	}
}
