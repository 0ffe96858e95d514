package pinhole

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
)

// A source's sip bindings are capped; the cap counts what it made, not what it uses, and a
// released binding gives its count back.
func TestBindingsPerSource(t *testing.T) {
	m, f := newTestMap(t, Config{MaxBindingsPerSource: 3})
	src := netip.MustParseAddr("203.0.113.9")
	var made []*Binding
	for i := range 3 {
		b, err := m.SignalingFor(SignalingRequest{Source: src, From: Outside, Transport: "udp", Addr: netip.AddrPortFrom(src, uint16(5060+i)), CallID: "reg"})
		if err != nil {
			t.Fatalf("binding %d: %v", i, err)
		}
		made = append(made, b)
	}
	_, err := m.SignalingFor(SignalingRequest{Source: src, From: Outside, Transport: "udp", Addr: ap("203.0.113.9:6000"), CallID: "reg"})
	if !errors.Is(err, ErrBindingLimit) {
		t.Fatalf("fourth binding: %v; want ErrBindingLimit", err)
	}
	// What exists is found whoever asks, past the cap.
	if b, err := m.SignalingFor(SignalingRequest{Source: src, From: Outside, Transport: "udp", Addr: ap("203.0.113.9:5060"), CallID: "reg"}); err != nil || b != made[0] {
		t.Errorf("existing binding past the cap = %v, %v", b, err)
	}
	// Another source, and the exempt zero source, are not held back.
	if _, err := m.SignalingFor(SignalingRequest{Source: netip.MustParseAddr("203.0.113.10"), From: Outside, Transport: "udp", Addr: ap("203.0.113.10:5060"), CallID: "x"}); err != nil {
		t.Errorf("another source: %v", err)
	}
	if _, err := m.Signaling(Outside, "udp", ap("203.0.113.9:7000"), "x"); err != nil {
		t.Errorf("exempt source: %v", err)
	}
	m.Release(made[1], ReasonReleased)
	if _, err := m.SignalingFor(SignalingRequest{Source: src, From: Outside, Transport: "udp", Addr: ap("203.0.113.9:6000"), CallID: "reg"}); err != nil {
		t.Errorf("after a release: %v; want the count given back", err)
	}
	m.Close()
	assertEmpty(t, m, f)
	if len(m.sigsOf) != 0 {
		t.Errorf("per-source counts left after Close: %v", m.sigsOf)
	}
}

// A binding that cannot be bound gives its count back.
func TestBindingsPerSourceFailedBind(t *testing.T) {
	m, f := newTestMap(t, Config{MaxBindingsPerSource: 1, SignalingPorts: PortRange{First: 40000, Last: 40000}})
	f.fail = func(network string, a netip.AddrPort) bool { return network == "udp" }
	src := netip.MustParseAddr("203.0.113.9")
	if _, err := m.SignalingFor(SignalingRequest{Source: src, From: Outside, Transport: "udp", Addr: ap("203.0.113.9:5060"), CallID: "x"}); !errors.Is(err, ErrNoPorts) {
		t.Fatalf("bind failure: %v; want ErrNoPorts", err)
	}
	f.fail = nil
	if _, err := m.SignalingFor(SignalingRequest{Source: src, From: Outside, Transport: "udp", Addr: ap("203.0.113.9:5060"), CallID: "x"}); err != nil {
		t.Errorf("after a failed bind: %v; want the count given back", err)
	}
}

// An offer with more streams than the cap takes nothing.
func TestStreamsPerCall(t *testing.T) {
	m, f := newTestMap(t, Config{MaxStreamsPerCall: 2, ReserveAnswerPair: true})
	tx := m.Begin("many", netip.MustParseAddr("203.0.113.9"))
	var err error
	for i := range 3 {
		if _, err = tx.Media(MediaRequest{From: Outside, Index: i, RTP: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(4000+2*i))}); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrStreamLimit) {
		t.Fatalf("third stream: %v; want ErrStreamLimit", err)
	}
	tx.Rollback()
	assertEmpty(t, m, f)

	// Two streams pass, and their answer (same streams) is no new stream.
	tx = m.Begin("two", netip.MustParseAddr("203.0.113.9"))
	for i := range 2 {
		if _, err := tx.Media(MediaRequest{From: Outside, Index: i, RTP: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(4000+2*i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	tx = m.Begin("two", netip.Addr{})
	for i := range 2 {
		if _, err := tx.Media(MediaRequest{From: Inside, Index: i, RTP: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.10"), uint16(8000+2*i))}); err != nil {
			t.Fatalf("answer stream %d: %v", i, err)
		}
	}
	if _, err := tx.Media(MediaRequest{From: Inside, Index: 2, RTP: ap("198.18.0.10:8004")}); !errors.Is(err, ErrStreamLimit) {
		t.Errorf("a third stream in a re-offer: %v; want ErrStreamLimit", err)
	}
	tx.Rollback()
}

// The pairs of a source's calls are capped, the answer pairs they reserve included; rollback,
// release and the end of a call give them back, and the answer's adoption of a reserved pair
// keeps its count.
func TestPortsPerSource(t *testing.T) {
	src := netip.MustParseAddr("203.0.113.9")
	m, f := newTestMap(t, Config{MaxPortsPerSource: 8, ReserveAnswerPair: true})
	call := func(id string) error {
		tx := m.Begin(id, src)
		defer tx.Rollback()
		if _, err := tx.Media(MediaRequest{From: Outside, RTP: ap("203.0.113.9:4000")}); err != nil {
			return err
		}
		return tx.Commit()
	}
	// Each offer takes two pairs (its own and its answer's): four ports.
	for i := range 2 {
		if err := call(fmt.Sprint("call-", i)); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if err := call("call-2"); !errors.Is(err, ErrPortLimit) {
		t.Fatalf("third call: %v; want ErrPortLimit", err)
	}
	// The answer takes over the reserved pair: no new count, so it passes at the cap.
	tx := m.Begin("call-0", netip.Addr{})
	if _, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:8000")}); err != nil {
		t.Fatalf("answer at the cap: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := m.pairsOf[src]; got != 4 {
		t.Errorf("pairs counted = %d, want 4", got)
	}
	// Another source is not held back; the exempt zero source neither.
	other := m.Begin("other", netip.MustParseAddr("203.0.113.10"))
	if _, err := other.Media(MediaRequest{From: Outside, RTP: ap("203.0.113.10:4000")}); err != nil {
		t.Errorf("another source: %v", err)
	}
	other.Rollback()

	m.ReleaseCall("call-0", ReasonCallEnded)
	if err := call("call-2"); err != nil {
		t.Errorf("after a call ended: %v; want its ports given back", err)
	}
	m.Close()
	assertEmpty(t, m, f)
	if len(m.pairsOf) != 0 {
		t.Errorf("per-source pair counts left: %v", m.pairsOf)
	}
}

// Running out of descriptors is no shortage of ports, and says so.
func TestNoDescriptors(t *testing.T) {
	m, f := newTestMap(t, Config{})
	f.failErr = syscall.EMFILE
	f.fail = func(string, netip.AddrPort) bool { return true }
	_, err := m.Signaling(Outside, "udp", ap("203.0.113.9:5060"), "x")
	if !errors.Is(err, ErrNoDescriptors) || errors.Is(err, ErrNoPorts) {
		t.Errorf("signaling: %v; want ErrNoDescriptors only", err)
	}
	tx := m.Begin("x", netip.Addr{})
	defer tx.Rollback()
	if _, err := tx.Media(MediaRequest{From: Outside, RTP: ap("203.0.113.9:4000")}); !errors.Is(err, ErrNoDescriptors) {
		t.Errorf("media: %v; want ErrNoDescriptors", err)
	}
}
