package pinhole

import (
	"net/netip"
	"testing"
)

// A binding is in the family of the peer it is handed to, not of the address it stands for: an
// IPv4 PBX's address handed to an IPv6 phone is an IPv6 binding, and the same address handed to
// an IPv4 peer has an IPv4 binding of its own.
func TestSignalingTowardPeerFamily(t *testing.T) {
	m, _ := newTestMap(t, Config{})
	pbx := ap("198.18.0.10:5060")
	v6, err := m.SignalingFor(SignalingRequest{From: Inside, Transport: "udp", Addr: pbx, CallID: "c",
		Toward: netip.MustParseAddr("2001:db8:b::20")})
	if err != nil {
		t.Fatal(err)
	}
	if v6.Address().Addr() != testPublic.IPv6 || v6.ForwardTo() != pbx {
		t.Errorf("binding for an IPv6 peer: %v -> %v, want sipcar's public IPv6 address", v6.Address(), v6.ForwardTo())
	}
	v4, err := m.SignalingFor(SignalingRequest{From: Inside, Transport: "udp", Addr: pbx, CallID: "c",
		Toward: netip.MustParseAddr("198.51.100.20")})
	if err != nil {
		t.Fatal(err)
	}
	if v4 == v6 || v4.Address().Addr() != testPublic.IPv4 {
		t.Errorf("binding for an IPv4 peer: %v (the IPv6 one %v)", v4.Address(), v6.Address())
	}
	if again, _ := m.Signaling(Inside, "udp", pbx, "c"); again != v4 {
		t.Errorf("without Toward the address's own family: got %v", again.Address())
	}
}

// A media pair is in the family of the peer the SDP goes to; the pair reserved for the answer in
// the family of the offerer, to whom the answer goes back.
func TestMediaTowardPeerFamily(t *testing.T) {
	m, _ := newTestMap(t, Config{ReserveAnswerPair: true})
	tx := m.Begin("c", netip.Addr{})
	p, err := tx.Media(MediaRequest{From: Outside, RTP: ap("[2001:db8:b::20]:4000"),
		Toward: netip.MustParseAddr("198.18.0.10"), Back: netip.MustParseAddr("2001:db8:b::20")})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if p.RTP.Addr() != testInside.IPv4 {
		t.Errorf("an IPv6 phone's offer to an IPv4 PBX advertised at %v, want sipcar's inside IPv4", p.RTP)
	}
	answer, ok := m.AnswerPair("c", 0, 0)
	if !ok || answer.RTP.Addr() != testPublic.IPv6 {
		t.Errorf("the pair reserved for the answer: %v %v, want sipcar's public IPv6", answer, ok)
	}
	// The PBX's answer, going back to the phone, takes the reserved pair over.
	tx = m.Begin("c", netip.Addr{})
	q, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:8000"), Toward: netip.MustParseAddr("2001:db8:b::20")})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if q != answer {
		t.Errorf("the answer got %v, want the reserved %v", q, answer)
	}
}
