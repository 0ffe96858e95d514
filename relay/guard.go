package relay

import (
	"net/netip"

	"github.com/sipcar/sipcar/pinhole"
)

// sipcar must not be turned against the network it protects. A message from outside names
// addresses at will: were sipcar to bind them, a later request through that binding (a PBX
// calling a "registered" Contact, media sent to an SDP address before latching) would carry
// whatever the outside chose to an inside host, to sipcar's own host, or to a broadcast. These
// checks decide which addresses an outside party may make sipcar send to, and which next hops
// sipcar refuses whatever the message.

// specialAddr reports whether a is no unicast address of a host: unspecified, multicast,
// link-local, broadcast.
func specialAddr(a netip.Addr) bool {
	a = a.Unmap()
	return !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.IsLinkLocalUnicast() ||
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// outsideMayName reports whether a message from outside, sent from src, may make sipcar send to
// a: not to the inside networks, not to sipcar's own addresses, not to loopback (unless src is on
// loopback itself), nothing special. The sender's own address is always fine.
func (r *Relay) outsideMayName(a, src netip.Addr) bool {
	a, src = a.Unmap(), src.Unmap()
	switch {
	case a == src:
		return true
	case specialAddr(a), r.cfg.sideOf(a) == pinhole.Inside:
		return false
	case r.m.Own(pinhole.Inside, a), r.m.Own(pinhole.Outside, a):
		return false
	case a.IsLoopback():
		return src.IsLoopback()
	}
	return true
}

// nextHopAllowed reports whether sipcar may send a message from src to dst: never to an address
// that is no host's, nor to loopback unless the inside is there (a PBX on the same host) or the
// message came from loopback.
func (r *Relay) nextHopAllowed(dst, src netip.Addr) bool {
	dst = dst.Unmap()
	if specialAddr(dst) {
		return false
	}
	if dst.IsLoopback() {
		return r.cfg.sideOf(dst) == pinhole.Inside || src.Unmap().IsLoopback() ||
			(r.cfg.Mode == Upstream && dst == r.cfg.Upstream.Addr().Unmap())
	}
	return true
}

// mediaPeer returns the address a stream's leg may send to before it learns its peer from its
// first packet: the SDP address, unless the SDP came from outside and names what outside may not
// make sipcar reach (then the peer is learned from its packets alone), or names no host.
func (r *Relay) mediaPeer(from pinhole.Side, sdp, signaled netip.AddrPort) netip.AddrPort {
	if !sdp.IsValid() {
		return sdp
	}
	if specialAddr(sdp.Addr()) {
		return netip.AddrPort{}
	}
	if from == pinhole.Outside && !r.outsideMayName(sdp.Addr(), signaled.Addr()) {
		return netip.AddrPort{}
	}
	return sdp
}
