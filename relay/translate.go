package relay

import (
	"net/netip"
	"strings"

	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// msgTranslator is the [rewrite.Translator] of one message: it answers from the server map,
// making signaling bindings as it goes and allocating media pairs in one pinhole transaction
// that the relay commits once the whole message is rewritten (or rolls back).
type msgTranslator struct {
	r         *Relay
	transport string         // the transport the message arrived over
	src       netip.AddrPort // where it really came from
	// source is what the bindings and pairs the message makes count against ([Relay.callSource]).
	source netip.Addr
	// senderVia is the sent-by of the top Via of a request (the sender's own): it and any
	// Contact naming it stand for src, which differs when the sender is behind a NAT.
	senderVia netip.AddrPort
	callID    string
	// next is the message's next hop when known before the rewrite, and out the transport it
	// goes over: the transport every binding this message makes is reached by.
	next netip.AddrPort
	out  string
	// fork is the dialog the message's SDP answers for in a forked call ([Relay.forkOf]).
	fork  string
	tx    *pinhole.Tx
	media []mediaAlloc
	// viaOut is the sent-by of the top Via as the message leaves (the key of its transaction).
	viaOut netip.AddrPort
	sawVia bool
	// bindings counts the sip bindings the message asked for (maxBindingsPerMessage).
	bindings int
	// aliased: the sender's Via (senderVia) is news to the NAT state, which a replica keeps
	// with the sender's binding.
	aliased bool
	// requestVias are, for a response, the via-parms of its request as the sender wrote them,
	// and requestSrc where that request came from (see RestoreVia).
	requestVias [][]byte
	requestSrc  netip.AddrPort
	// register: the message is a REGISTER; registerAnswer, a response to one.
	register, registerAnswer bool
}

// TranslateWritten gives a registrar's answer the Contacts of the phone as the phone wrote them
// in its REGISTER: a phone finds its own registration in the answer by comparing its Contact
// URI (RFC 3261 sections 10.2.4 and 19.1.4), which sipcar's address, or even the phone's own
// with a default port added, would not match.
func (t *msgTranslator) TranslateWritten(a rewrite.Addr, _ netip.AddrPort) []byte {
	if !t.registerAnswer || a.Field != rewrite.FieldContact || !t.r.m.Own(a.From, a.AddrPort.Addr().Unmap()) {
		return nil
	}
	if w, ok := t.r.nat.contact(netip.AddrPortFrom(a.AddrPort.Addr().Unmap(), a.AddrPort.Port())); ok {
		return []byte(w)
	}
	return nil
}

// RestoreVia gives a response's Vias back as its request's sender wrote them, byte for byte (a
// sender may drop a response whose sent-by is not the text it wrote, RFC 3261 section 18.1.2),
// the top one with what sipcar, the first hop that saw the sender's packets, owes it (received,
// rport's value: a phone behind a NAT learns its public address from them).
func (t *msgTranslator) RestoreVia(index int, _ []byte) []byte {
	if index >= len(t.requestVias) {
		return nil
	}
	if index == 0 {
		return rewrite.ViaReceivedFrom(nil, t.requestVias[0], t.requestSrc)
	}
	return t.requestVias[index]
}

// maxBindingsPerMessage bounds the sip bindings one message may ask for: a request through ten
// proxies names a dozen addresses; one naming hundreds is an attack on the port range.
const maxBindingsPerMessage = 32

// rollback gives back what the message allocated; nil-safe, and a no-op after Commit.
func (t *msgTranslator) rollback() {
	if t != nil && t.tx != nil {
		t.tx.Rollback()
	}
}

// mediaAlloc is one pair the message's SDP asked for.
type mediaAlloc struct {
	from        pinhole.Side
	src         netip.AddrPort // where the message with the SDP came from
	next        netip.AddrPort // where it went: an offer's answerer
	fork        string
	part, index int
	pair        pinhole.Pair
	rtp, rtcp   netip.AddrPort
	mux, held   bool
	// rtpmap are the section's payload types (a=rtpmap), secure says SRTP: for the media
	// relay's quality analysis.
	rtpmap []rewrite.RTPMap
	secure bool
}

var _ rewrite.Translator = (*msgTranslator)(nil)

func (t *msgTranslator) Translate(a rewrite.Addr) (netip.AddrPort, bool, error) {
	to, ok, err := t.translate(a)
	if a.Field == rewrite.FieldVia && !t.sawVia {
		t.sawVia, t.viaOut = true, netip.AddrPortFrom(a.AddrPort.Addr().Unmap(), a.AddrPort.Port())
		if ok {
			t.viaOut = to
		}
	}
	return to, ok, err
}

func (t *msgTranslator) translate(a rewrite.Addr) (netip.AddrPort, bool, error) {
	r := t.r
	from := a.From
	far := from.Other()
	ip := a.AddrPort.Addr().Unmap()
	if a.AddrPort.Port() == 0 {
		// An address alone (SDP o=, c= of a stream not relayed, maddr): sipcar's own address on
		// the far side stands for anything on the sender's side.
		if r.m.Own(from, ip) || r.bindsAddr(from, ip) {
			return netip.AddrPortFrom(r.m.LocalAddr(far, t.toward(ip)), 0), true, nil
		}
		return netip.AddrPort{}, false, nil
	}
	addr := netip.AddrPortFrom(ip, a.AddrPort.Port())
	if to, ok := r.staticBinding(from, addr, t.out, t.toward(addr.Addr())); ok {
		return to, true, nil
	}
	if r.m.Own(from, ip) {
		if b, ok := r.m.Resolve(from, addr); ok {
			return b.ForwardTo(), true, nil
		}
		if a.Field == rewrite.FieldRequestURI && from == pinhole.Outside && r.cfg.Mode == Upstream {
			// A request to sipcar's public address on a port that is no binding nor listener
			// goes to the upstream like one to a listener: it is addressed to the upstream.
			return r.cfg.Upstream, true, nil
		}
		return netip.AddrPort{}, false, nil // one of sipcar's own addresses that is no binding
	}
	if t.senderVia.IsValid() && addr == t.senderVia {
		addr = t.src
	} else if alias, ok := r.nat.alias(from, addr); ok {
		addr = alias
	}
	if !r.bindsAddr(from, addr.Addr()) {
		return netip.AddrPort{}, false, nil
	}
	if from == pinhole.Outside && !r.outsideMayName(addr.Addr(), t.src.Addr()) {
		if a.Field == rewrite.FieldRequestURI || a.Field == rewrite.FieldRoute {
			return netip.AddrPort{}, false, nil // where the message goes: never routed by from outside
		}
		// Where an outside sender asks to be reached, naming what it cannot be reached at (a
		// phone behind its own NAT) or what sipcar must not reach for it (the inside, sipcar's
		// host): its source is the one address known to reach it.
		addr = t.src
	}
	if t.bindings++; t.bindings > maxBindingsPerMessage && t.source.IsValid() {
		return netip.AddrPort{}, false, &refusal{metric: "too-many-addresses", code: 403, reason: "Forbidden",
			warning: "too many addresses in one message"}
	}
	b, err := r.m.SignalingFor(pinhole.SignalingRequest{From: from, Transport: t.out, Addr: addr, CallID: t.callID,
		Source: t.source, Toward: t.next.Addr()})
	if err != nil {
		return netip.AddrPort{}, false, err
	}
	orig := a.Transport
	if orig == "" || addr == t.src {
		orig = t.transport
	}
	changed := r.nat.noteTransport(b, orig) || (t.aliased && addr == t.src)
	if t.register && a.Field == rewrite.FieldContact && r.nat.noteContact(b, a.Written) {
		changed = true
	}
	if changed {
		r.changedSig(b)
	}
	return b.Address(), true, nil
}

// TranslateTransport says which transport reaches a translated address: sipcar's own addresses
// on the far side (bindings) and the next hop are reached over the transport the message goes
// out on; other addresses keep theirs.
func (t *msgTranslator) TranslateTransport(a rewrite.Addr, to netip.AddrPort) string {
	from := a.From
	if t.r.m.Own(from.Other(), to.Addr()) || (t.next.IsValid() && to == t.next) {
		if a.Lower && !t.r.m.Own(from, a.AddrPort.Addr().Unmap()) {
			// Another hop's Via hidden behind a binding: nothing is sent to it from here, so
			// its transport stays as that hop wrote it.
			return ""
		}
		return t.out
	}
	if own := netip.AddrPortFrom(a.AddrPort.Addr().Unmap(), a.AddrPort.Port()); t.r.m.Own(from, own.Addr()) {
		// One of sipcar's addresses going back to what it stands for (a Via or Record-Route of
		// the other side in a response, a Contact of a registered phone): over the transport
		// that reaches that, not the one it was published with.
		if t.r.cfg.Mode == Upstream && to == t.r.cfg.Upstream {
			return t.r.cfg.UpstreamTransport
		}
		if b, ok := t.r.m.Resolve(from, own); ok {
			return t.r.nat.originalTransport(b)
		}
	}
	return ""
}

func (t *msgTranslator) Media(from rewrite.Side, s *rewrite.Stream) (rewrite.MediaBinding, error) {
	if b, ok := t.r.ownMedia(from, s.RTP, t.callID); ok {
		// One of the call's own pairs coming back in the same call state (a hairpin whose two
		// crossings could not be told apart): it stands for its original address.
		return b, nil
	}
	if t.tx == nil {
		t.tx = t.r.m.Begin(t.callID, t.source)
	}
	req := pinhole.MediaRequest{
		From:  from,
		Part:  s.Part,
		Index: s.Index,
		RTP:   s.RTP,
		RTCP:  s.RTCP,
		Mux:   s.Mux,
		Held:  s.Direction != rewrite.SendRecv,
		Fork:  t.fork,
		// The pair faces the receiver of this SDP, in the family of its signalling or, for an
		// answer, of the stream's offered address; the one reserved for the answer faces the
		// sender, in the family of the stream's own address (a mixed-family offer is answered
		// per stream).
		Toward: t.next.Addr(),
		Back:   t.src.Addr(),
	}
	if a := t.r.calls.offeredAddr(t.callID, from.Other(), s.Part, s.Index); a.IsValid() {
		req.Toward = a
	}
	if a := s.RTP.Addr(); a.IsValid() {
		req.Back = a
	}
	p, err := t.tx.Media(req)
	if err != nil {
		return rewrite.MediaBinding{}, err
	}
	t.media = append(t.media, mediaAlloc{from: req.From, src: t.src, next: t.next, fork: t.fork, part: s.Part, index: s.Index, pair: p,
		rtp: s.RTP, rtcp: s.RTCP, mux: s.Mux, held: req.Held, secure: strings.Contains(s.Proto, "SAVP")})
	return p, nil
}

// bindsAddr reports whether an address that a message from side from names gets a binding on
// the far side. In upstream mode sipcar anchors both sides, so every address does; in
// transparent mode (source NAT) only inside addresses leaving the inside do: the gateway routes
// the inside's packets to the world as they are.
func (r *Relay) bindsAddr(from pinhole.Side, a netip.Addr) bool {
	if r.cfg.Mode == Upstream {
		return true
	}
	return from == pinhole.Inside && r.cfg.sideOf(a) == pinhole.Inside
}

// staticBinding translates between the upstream and the public address of sipcar's listeners:
// in upstream mode the PBX is published as sipcar itself (the docker pattern), so phones see it
// at PUBLIC_ADDR and the listener port of the transport they use, and what reaches any of those
// addresses goes to the PBX.
func (r *Relay) staticBinding(from pinhole.Side, a netip.AddrPort, transport string, toward netip.Addr) (netip.AddrPort, bool) {
	if r.cfg.Mode != Upstream {
		return netip.AddrPort{}, false
	}
	if from == pinhole.Inside && a == r.cfg.Upstream {
		if pub := r.publicListen(transport, toward); pub.IsValid() {
			return pub, true
		}
	}
	if from == pinhole.Outside && r.isPublicListen(a) {
		return r.cfg.Upstream, true
	}
	return netip.AddrPort{}, false
}

// publicListen is the address phones reach the upstream at over transport: the public address
// and that transport's listener port (another listener's when it has none).
func (r *Relay) publicListen(transport string, toward netip.Addr) netip.AddrPort {
	pub := r.m.LocalAddr(pinhole.Outside, toward)
	l := r.cfg.ListenUDP
	switch {
	case transport == "tls" && r.cfg.ListenTLS.IsValid():
		l = r.cfg.ListenTLS
	case transport == "tcp" && r.cfg.ListenTCP.IsValid():
		l = r.cfg.ListenTCP
	case !l.IsValid() && r.cfg.ListenTCP.IsValid():
		l = r.cfg.ListenTCP
	case !l.IsValid():
		l = r.cfg.ListenTLS
	}
	return netip.AddrPortFrom(pub, l.Port())
}

func (r *Relay) isPublicListen(a netip.AddrPort) bool {
	if !r.m.Own(pinhole.Outside, a.Addr()) {
		return false
	}
	for _, l := range []netip.AddrPort{r.cfg.ListenUDP, r.cfg.ListenTCP, r.cfg.ListenTLS} {
		if l.IsValid() && l.Port() == a.Port() {
			return true
		}
	}
	return false
}

// callSource is the address a message's allocations (calls, pairs, sip bindings) count against
// for the per-source caps; the upstream is exempt.
func (r *Relay) callSource(src netip.AddrPort) netip.Addr {
	if r.isUpstream(src) {
		return netip.Addr{}
	}
	return src.Addr().Unmap()
}

// ownMedia returns, when a is the RTP address of one of call key's live media pairs on side,
// the address that pair forwards to (RTP and RTCP). Another call's pair (a B2BUA's other leg, a
// hairpin's other crossing) is not: it is an address like any, anchored by a pair of its own.
func (r *Relay) ownMedia(side pinhole.Side, a netip.AddrPort, key string) (rewrite.MediaBinding, bool) {
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	if !r.m.Own(side, a.Addr()) {
		return rewrite.MediaBinding{}, false
	}
	b := r.m.LookupMedia(a.Port())
	if b == nil || b.Type() != pinhole.TypeRTP || b.Address() != a || b.CallID() != key {
		return rewrite.MediaBinding{}, false
	}
	out := rewrite.MediaBinding{RTP: b.ForwardTo(), RTCPPort: b.ForwardTo().Port() + 1}
	if rtcp := r.m.LookupMedia(a.Port() + 1); rtcp != nil && rtcp.Type() == pinhole.TypeRTCP {
		out.RTCPPort = rtcp.ForwardTo().Port()
	}
	return out, true
}

// transportTo returns the transport to reach dst over: a live TCP or TLS connection with it
// (the phone's own, RFC 5923 style reuse) wins over the binding's transport def.
func (r *Relay) transportTo(dst netip.AddrPort, def string) string {
	if tr := r.tp.connected(dst); tr != "" {
		return tr
	}
	return def
}

// udpSizeLimit is the size above which a request goes over TCP when the operator asks for it:
// RFC 3261's 1300 bytes, 200 below the common path MTU of 1500.
const udpSizeLimit = 1300

// senderBinding returns the address a message leaves from on the far side, and its binding when
// it is one of the server map's.
func (r *Relay) senderBinding(p *msgPass) (netip.AddrPort, *pinhole.Binding, error) {
	in := p.in
	if r.cfg.Mode == Transparent && p.from == pinhole.Outside {
		// Toward the inside a transparent gateway changes only the destination: the phone sees
		// the message come from whoever sent it.
		return in.src, nil, nil
	}
	toward := p.next.Addr()
	if !toward.IsValid() {
		toward = in.src.Addr()
	}
	if to, ok := r.staticBinding(p.from, in.src, p.out, toward); ok {
		return to, nil, nil
	}
	b, err := r.m.SignalingFor(pinhole.SignalingRequest{From: p.from, Transport: p.out, Addr: in.src, CallID: p.callID,
		Source: p.t.source, Toward: toward})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	if r.nat.noteTransport(b, in.transport) {
		r.changedSig(b)
	}
	return b.Address(), b, nil
}

// toward returns an address of the family the message's receiver reads addresses in: the next
// hop's, or like's own when the next hop is not known before rewriting.
func (t *msgTranslator) toward(like netip.Addr) netip.Addr {
	if t.next.IsValid() {
		return t.next.Addr()
	}
	return like
}
