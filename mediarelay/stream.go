package mediarelay

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// Leg names one of the two legs of a stream: a relay port (pair) and the peer it faces.
type Leg uint8

const (
	LegA Leg = iota // the leg facing the inside
	LegB            // the leg facing the outside
)

func (l Leg) String() string {
	if l == LegA {
		return "A"
	}
	return "B"
}

// LatchMode says from which sources a leg accepts packets.
type LatchMode uint8

const (
	// LatchLearn (symmetric RTP, with rtpengine's heuristic learning as the anchor): a packet
	// from the SDP address latches the leg on it for good. While the leg learns, sources that
	// match what signalling says are preferred: a packet from the SDP's IP address or the
	// signalling peer's ([LegSpec.Signal]) latches the leg tentatively (the SDP address may still
	// take over during [Config.LatchWindow]); a packet from anywhere else is dropped until no
	// preferred packet came for a LatchWindow since the first such packet, and only then
	// latched (a phone whose media leaves from another address than its signalling still gets
	// audio, after the window; an attacker spraying the port before the peer's first packet
	// gets nothing through). Two kinds of port never take another source by the window: a leg
	// whose peer has not answered ([LegSpec.Unanswered]), and the RTCP port of a non-muxed leg,
	// which takes another source only from the address the leg's RTP latched on (RFC 3550: a
	// peer's RTCP comes from the host that sends its RTP; a peer that sends no RTCP would
	// otherwise leave the port to whoever sprays it). A tentative latch becomes final after the
	// window. Packets from any other source are dropped and counted (RTP bleed).
	LatchLearn LatchMode = iota
	// LatchStrict accepts packets only from the SDP address.
	LatchStrict
)

// LegSpec describes one leg of a stream.
type LegSpec struct {
	// RTP is the relay's own address on this leg: packets from the peer arrive here, and
	// packets to the peer leave from here. Its port must be reserved through [Relay.Reserve].
	RTP netip.AddrPort
	// RTCP is the relay's RTCP address on this leg, reserved likewise. It is ignored when Mux.
	RTCP netip.AddrPort
	// Mux says this leg carries RTCP on its RTP port (a=rtcp-mux): packets with payload type
	// 200-207 are RTCP.
	Mux bool
	// Peer is the peer's RTP address as its SDP says; the zero value while it is not known
	// (an offer not yet answered). Packets to the peer go here until it is latched.
	Peer netip.AddrPort
	// PeerRTCP is the peer's RTCP address (a=rtcp); zero means Peer's port + 1. Ignored when Mux.
	PeerRTCP netip.AddrPort
	// Signal is the peer's signalling address, whose packets are preferred while the leg learns
	// its peer (a phone behind a NAT sends media from its signalling address, another port);
	// zero when not known.
	Signal netip.Addr
	// Unanswered says the peer has not answered the offer it was sent: it gave no SDP yet (Peer
	// is zero), and it sends media only once it has sent its answer (RFC 3264), so until then
	// only packets from Signal's address are accepted, however long it rings. (A peer that
	// answered with a placeholder or an address sipcar may not send to also has a zero Peer,
	// but may be learned by the window.)
	Unanswered bool
	Latch      LatchMode
	// Shared lets this leg's relay ports carry the same leg of other streams that also share
	// them: the dialogs of a forked call, each answering the one offer whose pair this leg is.
	// A packet arriving on a shared port belongs to the stream whose peer it comes from (latched
	// or SDP address), else to one whose peer is still unknown; packets to each peer leave from
	// the shared port.
	Shared bool
}

// StreamSpec describes one media stream: a packet arriving on leg A's port from A's peer
// leaves from leg B's port to B's peer, and the other way round.
type StreamSpec struct {
	CallID string // the call the stream belongs to; for events and logs
	A, B   LegSpec
	// Hold marks a stream on hold (a=sendonly, a=inactive): it is never reported idle.
	Hold bool
	// ClockRate is the RTP clock rate in Hz of payload types neither PayloadTypes nor RFC 3551's
	// static table names, for jitter (default 8000).
	ClockRate uint32
	// PayloadTypes are the payload types the SDP names (a=rtpmap), for their clock rates and
	// encodings.
	PayloadTypes []PayloadType
	// Secure marks SRTP (RTP/SAVP, RTP/SAVPF, DTLS-SRTP): the RTP header is readable, but RTCP
	// report blocks are encrypted, so they are not read.
	Secure bool
}

func (s *StreamSpec) leg(l Leg) *LegSpec {
	if l == LegA {
		return &s.A
	}
	return &s.B
}

// Stream is a media stream the relay forwards, from [Relay.AddStream] until
// [Relay.RemoveStream]. Its methods are safe for concurrent use.
type Stream struct {
	// clock is payloadTable.clock of payloads, read per packet: in the stream itself, one
	// pointer less to follow than the table. Entries change one by one with UpdateStream; a
	// packet reading one mid-change gets the old clock or the new.
	clock    [128]atomic.Uint32
	callID   string
	eps      [4]*endpoint // epIndex(leg, rtcp); RTCP entries nil on a muxed leg
	hold     atomic.Bool
	payloads atomic.Pointer[payloadTable]
	secure   atomic.Bool
	removed  atomic.Bool
	// handover: a leg latched for good since the last hand-over pass, which hands the stream
	// to the kernel path (kernel_linux.go) before the next sweep would.
	handover atomic.Bool
	// rtcp is what each leg's peer said in RTCP and what the relay timed of it (rtcp.go).
	rtcp [2]rtcpLeg

	hk streamHousekeeping // owned by the housekeeping goroutine
}

// CallID returns the Call-ID the stream was added with.
func (s *Stream) CallID() string { return s.callID }

// Secure reports whether the stream carries SRTP (its RTCP is SRTCP: only the header is clear).
func (s *Stream) Secure() bool { return s.secure.Load() }

func epIndex(l Leg, rtcp bool) int {
	i := int(l) * 2
	if rtcp {
		i++
	}
	return i
}

// endpoint is one relay port of a stream: where one leg's RTP (or, on a non-muxed leg, RTCP)
// arrives from and leaves to that leg's peer.
type endpoint struct {
	stream *Stream
	leg    Leg
	rtcp   bool // the RTCP port of a non-muxed leg
	mux    bool // the RTP port of a muxed leg
	local  netip.AddrPort
	shared bool // LegSpec.Shared
	sock   *portSocket
	// outRTP and outRTCP are where packets arriving here leave: the other leg's RTP endpoint,
	// and its RTCP endpoint (its RTP endpoint when that leg is muxed).
	outRTP, outRTCP *endpoint

	peer atomic.Pointer[peerState]
	// learnSince is the clock (ns) of the first packet from a source not preferred while the
	// leg learns; 0 while none came. It restarts with every new latchNone peer state.
	learnSince atomic.Int64
	rx         rxStats
	sent       counter
	kern       kernelLeg // the kernel fast path's (kernel_linux.go)
}

// latchState is how far an endpoint has learned its peer.
type latchState uint8

const (
	latchNone      latchState = iota // no packet yet: send to the SDP address
	latchTentative                   // latched on a source other than the SDP address, window open
	latchFinal                       // latched for good
)

// peerState is an endpoint's view of its peer. It is immutable: a change installs a new one
// with CompareAndSwap, so packet goroutines read it without locks.
type peerState struct {
	state      latchState
	strict     bool
	unanswered bool           // LegSpec.Unanswered
	sdp        netip.AddrPort // the SDP address; invalid when not known
	signal     netip.Addr     // the signalling peer's address; invalid when not known
	addr       netip.AddrPort // the latched source; invalid when latchNone
	// dst is where packets to the peer go (addr when latched, else sdp), encoded once for the
	// packet path.
	dst sock.Addr
}

func newPeerState(state latchState, strict, unanswered bool, sdp netip.AddrPort, signal netip.Addr, addr netip.AddrPort) *peerState {
	p := &peerState{state: state, strict: strict, unanswered: unanswered, sdp: sdp, signal: signal, addr: addr}
	if state == latchNone {
		p.dst.Set(sdp)
	} else {
		p.dst.Set(addr)
	}
	return p
}

// latched returns the state that latches p's peer on src.
func (p *peerState) latched(state latchState, src netip.AddrPort) *peerState {
	return newPeerState(state, p.strict, p.unanswered, p.sdp, p.signal, src)
}

// preferred reports whether src is where signalling says the peer is: the SDP's IP address or
// the signalling peer's, any port.
func (p *peerState) preferred(src netip.AddrPort) bool {
	a := src.Addr()
	return (p.sdp.IsValid() && a == p.sdp.Addr()) || (p.signal.IsValid() && a == p.signal)
}

// knows reports whether signalling says anything of where the peer is.
func (p *peerState) knows() bool { return p.sdp.IsValid() || p.signal.IsValid() }

// accept applies the latching rules to a packet from src that arrived at now (ns) and reports
// whether it is the peer's, and whether it latched the peer for good (final: this packet did, no
// other); window is the learning window (ns). It allocates only when the peer changes, which
// happens at most a few times per stream.
func (e *endpoint) accept(src netip.AddrPort, now, window int64) (ok, final bool) {
	for {
		p := e.peer.Load()
		var next *peerState
		switch {
		case p.state == latchFinal:
			return src == p.addr, false
		case p.state == latchTentative && src == p.addr:
			return true, false
		case src == p.sdp:
			next = p.latched(latchFinal, src)
		case p.strict:
			return false, false
		case p.state == latchTentative:
			// A source signalling names takes over from one it does not.
			if !p.preferred(src) || p.preferred(p.addr) {
				return false, false
			}
			next = p.latched(latchTentative, src)
		case p.preferred(src):
			next = p.latched(latchTentative, src)
		case p.unanswered:
			return false, false
		case !p.knows():
			next = p.latched(latchTentative, src)
		case e.rtcp:
			if a := e.rtpLatched(); !a.IsValid() || src.Addr() != a.Addr() {
				return false, false
			}
			next = p.latched(latchTentative, src)
		default:
			// Another source while the leg learns: not before a preferred one had its window.
			since := e.learnSince.Load()
			if since == 0 {
				e.learnSince.CompareAndSwap(0, now)
				return false, false
			}
			if now-since < window {
				return false, false
			}
			next = p.latched(latchTentative, src)
		}
		if e.peer.CompareAndSwap(p, next) {
			return true, next.state == latchFinal
		}
	}
}

// rtpLatched returns where the RTP port of an RTCP port's leg latched; invalid while it has not.
func (e *endpoint) rtpLatched() netip.AddrPort {
	if p := e.stream.eps[epIndex(e.leg, false)].peer.Load(); p.state != latchNone {
		return p.addr
	}
	return netip.AddrPort{}
}

// pickShared chooses among the endpoints that share a port (forks of one offer) the one a packet
// from src belongs to: the one latched on src, else the one whose SDP names src, else an RTCP
// port still learning whose leg's RTP latched on src's address, else the first still learning
// its peer, else the first (which drops it as bleed).
func pickShared(eps []*endpoint, src netip.AddrPort) *endpoint {
	var learning, follows *endpoint
	for _, e := range eps {
		p := e.peer.Load()
		if p.state != latchNone && p.addr == src {
			return e
		}
		if p.state != latchNone {
			continue
		}
		if learning == nil && (!p.strict || p.sdp == src) {
			learning = e
		}
		if follows == nil && e.rtcp && !p.strict && e.rtpLatched().Addr() == src.Addr() {
			follows = e
		}
	}
	for _, e := range eps {
		if p := e.peer.Load(); p.state != latchFinal && p.sdp == src {
			return e
		}
	}
	switch {
	case follows != nil:
		return follows
	case learning != nil:
		return learning
	}
	return eps[0]
}

// finalize ends the learning window of a tentative latch.
func (e *endpoint) finalize(p *peerState) {
	if p.state == latchTentative {
		e.peer.CompareAndSwap(p, p.latched(latchFinal, p.addr))
	}
}

func validateSpec(spec *StreamSpec, min, max uint16) error {
	var errs []error
	seen := map[uint16]bool{}
	for _, l := range []Leg{LegA, LegB} {
		ls := spec.leg(l)
		locals := []netip.AddrPort{ls.RTP}
		if !ls.Mux {
			locals = append(locals, ls.RTCP)
		}
		for _, a := range locals {
			switch {
			case !a.IsValid():
				errs = append(errs, fmt.Errorf("leg %v: relay address missing", l))
			case a.Port() < min || a.Port() > max:
				errs = append(errs, fmt.Errorf("leg %v: relay port %d outside %d-%d", l, a.Port(), min, max))
			case seen[a.Port()]:
				errs = append(errs, fmt.Errorf("leg %v: relay port %d used twice", l, a.Port()))
			}
			seen[a.Port()] = true
		}
		for _, p := range []netip.AddrPort{ls.Peer, ls.PeerRTCP} {
			if p.IsValid() && p.Addr().Unmap().Is4() != ls.RTP.Addr().Unmap().Is4() {
				errs = append(errs, fmt.Errorf("leg %v: peer %v and relay address %v differ in family", l, p, ls.RTP))
			}
		}
		if ls.Latch > LatchStrict {
			errs = append(errs, fmt.Errorf("leg %v: latch mode %d unknown", l, ls.Latch))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return nil
}

// peerRTCP returns the SDP RTCP address of a non-muxed leg.
func (ls *LegSpec) peerRTCP() netip.AddrPort {
	if ls.PeerRTCP.IsValid() || !ls.Peer.IsValid() {
		return ls.PeerRTCP
	}
	return netip.AddrPortFrom(ls.Peer.Addr(), ls.Peer.Port()+1)
}

func unmapAddrPort(a netip.AddrPort) netip.AddrPort {
	if !a.IsValid() {
		return a
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
