package rewrite

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// natTranslator is a map-backed [Translator] that behaves as DESIGN.md's model says the server
// map does: an address on the sender's side gets a binding on the far side (one per address),
// an address that is one of its bindings is translated back, and media streams get an RTP/RTCP
// port pair on the far side.
type natTranslator struct {
	insideNets []netip.Prefix
	// sipcar's own addresses: the inside-facing one and the public one, per family.
	insideAddr, publicAddr   netip.Addr
	insideAddr6, publicAddr6 netip.Addr
	anchorOutside            bool // give outside signaling addresses inside-facing bindings too
	nextSig, nextMedia       map[Side]uint16
	fwd                      map[sigKey]netip.AddrPort // (side, original) -> sipcar's address on the other side
	rev                      map[sigKey]netip.AddrPort // (side sipcar's address faces, sipcar address) -> original
	media                    []MediaBinding
	translated               []Addr
	failMedia                error
}

type sigKey struct {
	side Side
	addr netip.AddrPort
}

func newNAT() *natTranslator {
	return &natTranslator{
		insideNets:  []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("2001:db8:a::/64")},
		insideAddr:  netip.MustParseAddr("192.168.1.254"),
		publicAddr:  netip.MustParseAddr("1.1.1.10"),
		insideAddr6: netip.MustParseAddr("2001:db8:a::fe"),
		publicAddr6: netip.MustParseAddr("2001:db8:b::10"),
		nextSig:     map[Side]uint16{Outside: 2222, Inside: 6222},
		nextMedia:   map[Side]uint16{Outside: 3334, Inside: 5334},
		fwd:         map[sigKey]netip.AddrPort{},
		rev:         map[sigKey]netip.AddrPort{},
	}
}

func (n *natTranslator) own(side Side, a netip.Addr) netip.Addr {
	switch {
	case side == Inside && a.Is6():
		return n.insideAddr6
	case side == Inside:
		return n.insideAddr
	case a.Is6():
		return n.publicAddr6
	}
	return n.publicAddr
}

func (n *natTranslator) isInside(a netip.Addr) bool {
	return slices.ContainsFunc(n.insideNets, func(p netip.Prefix) bool { return p.Contains(a) })
}

// onSide reports whether a belongs to the network on side s (and is not sipcar's own).
func (n *natTranslator) onSide(s Side, a netip.Addr) bool {
	if a == n.insideAddr || a == n.publicAddr || a == n.insideAddr6 || a == n.publicAddr6 {
		return false
	}
	if s == Inside {
		return n.isInside(a)
	}
	return !n.isInside(a) && n.anchorOutside
}

func (n *natTranslator) Translate(a Addr) (netip.AddrPort, bool, error) {
	n.translated = append(n.translated, a)
	far := a.From.Other()
	if a.AddrPort.Port() == 0 { // an address alone: SDP o=/c=, maddr
		ip := a.AddrPort.Addr()
		if ip == n.own(a.From, ip) {
			return netip.AddrPortFrom(n.own(far, ip), 0), true, nil
		}
		if n.isInside(ip) == (a.From == Inside) {
			return netip.AddrPortFrom(n.own(far, ip), 0), true, nil
		}
		return netip.AddrPort{}, false, nil
	}
	if orig, ok := n.rev[sigKey{a.From, a.AddrPort}]; ok {
		return orig, true, nil
	}
	if !n.onSide(a.From, a.AddrPort.Addr()) {
		return netip.AddrPort{}, false, nil
	}
	k := sigKey{a.From, a.AddrPort}
	if b, ok := n.fwd[k]; ok {
		return b, true, nil
	}
	b := netip.AddrPortFrom(n.own(far, a.AddrPort.Addr()), n.nextSig[far])
	n.nextSig[far]++
	n.fwd[k] = b
	n.rev[sigKey{far, b}] = a.AddrPort
	return b, true, nil
}

func (n *natTranslator) Media(from Side, s *Stream) (MediaBinding, error) {
	if n.failMedia != nil && len(n.media) > 0 {
		return MediaBinding{}, n.failMedia
	}
	far := from.Other()
	p := n.nextMedia[far]
	n.nextMedia[far] += 2
	b := MediaBinding{RTP: netip.AddrPortFrom(n.own(far, s.RTP.Addr()), p), RTCPPort: p + 1}
	n.media = append(n.media, b)
	return b, nil
}

var errNoPorts = errors.New("no relay ports left")

func (n *natTranslator) String() string { return fmt.Sprintf("nat %v", n.fwd) }

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
