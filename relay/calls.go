package relay

import (
	"context"
	"net/netip"
	"strconv"
	"time"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// callState is what the relay remembers of a call: enough to allocate and release its media at
// the right moments, not a dialog state machine (sipcar is no B2BUA).
type callState struct {
	established bool // a 2xx answered the initial INVITE
	cancelled   bool // a CANCEL passed
	started     time.Time
	// caller is the side the initial INVITE came from, and callerTag its From tag: the other tag
	// of a message names the dialog it belongs to, which tells the forks of a call apart.
	caller    pinhole.Side
	callerTag string
	streams   map[streamKey]*relayedStream
}

// streamKey names a relayed stream: the m= line (SDP body and index) and, in a forked call, the
// dialog (the answering side's tag; "" until an answer names one).
type streamKey struct {
	fork        string
	part, index int
}

// relayedStream is one media stream of a call as the media relay forwards it: the pair each
// side's SDP was given (legs, by the side whose SDP it was) and the media relay's stream once
// both sides have spoken. The dialogs of a forked call each have one, sharing the offerer's leg.
type relayedStream struct {
	callID  string
	offerer pinhole.Side   // the caller's side, whose pair the forks share; 0 when not known
	legs    [3]*mediaAlloc // by pinhole.Side
	// answer is the pair reserved with the offer for its answer, while only the offer is known:
	// the stream is wired with it so that the answerer's early packets reach the offerer.
	answer pinhole.Pair
	stream *mediarelay.Stream
	spec   mediarelay.StreamSpec
}

// dialogTag returns the tag that names the dialog of m within call c: the one of From and To that
// is not the caller's. It is "" when c's caller is not known.
func (c *callState) dialogTag(m *rewrite.Message) string {
	if c.callerTag == "" {
		return ""
	}
	if ft := m.FromTag(); string(ft) != c.callerTag {
		return string(ft)
	}
	return string(m.ToTag())
}

// forkOf names the dialog that SDP from side from in m answers for, for pinhole's
// MediaRequest.Fork: the dialog's tag for the callee's side of a known call, else "" (the
// caller's offers are shared by every dialog).
func (r *Relay) forkOf(callID string, from pinhole.Side, m *rewrite.Message) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls[callID]
	if c == nil || from == c.caller {
		return ""
	}
	return c.dialogTag(m)
}

// hairpinKey names one crossing of a call through sipcar: its Call-ID and its party outside.
type hairpinKey struct {
	callID string
	party  netip.AddrPort
}

// maxHairpins bounds the hairpinned calls remembered; past it the table starts again (a crossing
// then shares its call's state, as before it was told apart).
const maxHairpins = 100000

// passOf returns the key of the call state a message belongs to: its Call-ID, or for the second
// crossing of a call that hairpins, a key of its own. An outside phone calling another through an
// inside proxy that does not anchor media (kamailio without rtpengine) crosses sipcar twice with
// one Call-ID and one set of tags: outside to inside, then inside to outside. Each crossing is a
// call of its own for the media relay, with its own offer and answer, so that media is anchored
// (DESIGN.md: phones see each other at sipcar's bindings) rather than sent between phones that may
// not reach each other. In upstream mode a crossing is told apart by its party outside: where a
// message from outside came from, or where one from inside goes.
func (r *Relay) passOf(callID string, from pinhole.Side, src, next netip.AddrPort, m *rewrite.Message) string {
	if r.cfg.Mode != Upstream {
		return callID
	}
	party := src
	if from == pinhole.Inside {
		party = next
	}
	if !party.IsValid() {
		return callID
	}
	hk := hairpinKey{callID, party}
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, ok := r.hairpins[hk]; ok {
		return k
	}
	if from != pinhole.Inside || !m.IsRequest() || string(m.Method()) != "INVITE" || len(m.ToTag()) > 0 {
		return callID
	}
	if c := r.calls[callID]; c == nil || c.caller != pinhole.Outside {
		return callID
	}
	// The call's initial INVITE came in from outside and now goes back out: a hairpin.
	if len(r.hairpins) >= maxHairpins {
		clear(r.hairpins)
		clear(r.hairpinOf)
	}
	k := callID + " to " + party.String()
	r.hairpins[hk] = k
	r.hairpinOf[k] = hk
	return k
}

// forgetPassLocked drops the hairpin entry of a crossing whose call state is gone.
func (r *Relay) forgetPassLocked(key string) {
	if hk, ok := r.hairpinOf[key]; ok {
		delete(r.hairpins, hk)
		delete(r.hairpinOf, key)
	}
}

// afterRewrite updates call state once a message is rewritten and its allocations committed:
// it gives the media relay the streams whose both sides are known and releases media when the
// call ends.
func (r *Relay) afterRewrite(p *msgPass) {
	m, t, from, in := &p.m, p.t, p.from, p.in
	callID := t.callID
	r.m.TouchCall(callID)
	if len(t.media) > 0 || r.hasCall(callID) {
		r.updateStreams(callID, t, from, &p.res, p.initial, m.FromTag())
	}
	if m.IsRequest() {
		if string(m.Method()) == "CANCEL" {
			r.withCall(callID, func(c *callState) { c.cancelled = true })
		}
		return
	}
	code := m.StatusCode()
	_, method := m.CSeq()
	if code < 200 {
		ringing := false
		r.withCall(callID, func(c *callState) { ringing = !c.established })
		if string(method) == "INVITE" && ringing {
			// It rings: the call's pairs live as long as its INVITE may (a proxy's Timer C), and
			// the server map shows that lifetime.
			r.m.RingCall(callID, txRinging)
		}
		return
	}
	switch string(method) {
	case "INVITE":
		r.m.RingCall(callID, 0)
		if code < 300 {
			first, tag := false, ""
			r.withCall(callID, func(c *callState) {
				first, tag = !c.established, c.dialogTag(m)
				c.established = true
			})
			if first && tag != "" {
				// The call is settled on this dialog: other forks' media goes (their pairs'
				// release removes their streams). A later 2xx of another fork keeps its own
				// until its BYE.
				r.m.SettleFork(callID, tag)
			}
			return
		}
		var established, cancelled bool
		r.withCall(callID, func(c *callState) { established, cancelled = c.established, c.cancelled })
		if !established {
			reason := pinhole.ReasonRejected
			if cancelled || code == 487 {
				reason = pinhole.ReasonCancelled
			}
			r.endCall(callID, reason)
		}
	case "BYE":
		tag := ""
		r.withCall(callID, func(c *callState) { tag = c.dialogTag(m) })
		if tag != "" && r.m.EndFork(callID, tag) {
			return // one dialog of a forked call ended; the others keep their media
		}
		r.endCall(callID, pinhole.ReasonCallEnded)
	case "REGISTER":
		if code < 300 {
			r.registered(m, from, in)
		}
	}
}

// updateStreams records the pairs a message's SDP was given, marks held and dropped streams,
// and hands streams whose two sides are known to the media relay.
func (r *Relay) updateStreams(callID string, t *msgTranslator, from pinhole.Side, res *rewrite.Result, initial bool, fromTag []byte) {
	r.mu.Lock()
	c := r.calls[callID]
	if c == nil {
		if len(t.media) == 0 {
			r.mu.Unlock()
			return
		}
		c = &callState{streams: make(map[streamKey]*relayedStream), started: time.Now()}
		r.calls[callID] = c
	}
	if initial && c.callerTag == "" && len(fromTag) > 0 {
		c.caller, c.callerTag = from, string(fromTag)
	}
	var ready []*relayedStream
	for i := range t.media {
		a := t.media[i]
		for _, st := range c.streamsFor(callID, &a) {
			st.legs[a.from] = &a
			if st.legs[pinhole.Inside] != nil && st.legs[pinhole.Outside] != nil {
				st.answer = pinhole.Pair{}
				ready = append(ready, st)
			} else if p, ok := r.m.AnswerPair(callID, a.part, a.index); ok {
				st.answer = p
				ready = append(ready, st)
			}
		}
	}
	for _, s := range res.Streams {
		for k, st := range c.streams {
			if k.part != s.Part || k.index != s.Index || (t.fork != "" && k.fork != t.fork) || st.stream == nil {
				continue
			}
			switch s.Disposition {
			case rewrite.Held, rewrite.Rejected:
				ready = append(ready, st) // re-specified below with the hold flag
				if l := st.legs[from]; l != nil {
					l.held = true
				}
			}
		}
	}
	r.mu.Unlock()
	for _, st := range ready {
		r.wire(st)
	}
}

// streamsFor returns the relayed streams that pair a takes a side in, making the one it needs:
// the offerer's pair (no fork) is every dialog's; an answer's belongs to its dialog's stream,
// which takes over the stream the offer made or, for a further fork, starts with the offer's
// leg. Callers hold r.mu.
func (c *callState) streamsFor(callID string, a *mediaAlloc) []*relayedStream {
	var sts []*relayedStream
	var unanswered *relayedStream
	for k, st := range c.streams {
		if k.part != a.part || k.index != a.index {
			continue
		}
		if a.fork == "" || k.fork == a.fork {
			sts = append(sts, st)
		}
		if k.fork == "" && st.legs[a.from] == nil {
			unanswered = st
		}
	}
	if len(sts) > 0 {
		return sts
	}
	st := unanswered
	if st != nil {
		delete(c.streams, streamKey{"", a.part, a.index})
	} else {
		st = &relayedStream{callID: callID, offerer: c.caller}
		for k, o := range c.streams {
			if k.part == a.part && k.index == a.index && c.caller != 0 {
				st.legs[c.caller] = o.legs[c.caller] // the offer every fork answers
				break
			}
		}
	}
	c.streams[streamKey{a.fork, a.part, a.index}] = st
	return []*relayedStream{st}
}

// wire gives the media relay a stream's current spec. Leg A of the media relay is the relay
// port facing the inside: the pair that the outside's SDP was given (on the inside), whose
// packets come from the inside peer. Leg B is the other way round.
func (r *Relay) wire(st *relayedStream) {
	r.mu.Lock()
	in, out := st.legs[pinhole.Inside], st.legs[pinhole.Outside]
	if in == nil || out == nil {
		if !st.answer.RTP.IsValid() {
			r.mu.Unlock()
			return
		}
		// Only the offer is known: the answer's reserved pair, its peer learned from the first
		// packet.
		if in == nil {
			in = &mediaAlloc{pair: st.answer}
		} else {
			out = &mediaAlloc{pair: st.answer}
		}
	}
	mux := in.mux && out.mux
	a, b := r.bindAddr(out.pair.RTP), r.bindAddr(in.pair.RTP)
	spec := mediarelay.StreamSpec{
		CallID: st.callID,
		A: mediarelay.LegSpec{RTP: a, RTCP: netip.AddrPortFrom(a.Addr(), out.pair.RTCPPort),
			Mux: mux, Peer: r.mediaPeer(pinhole.Inside, in.rtp, in.src), PeerRTCP: r.mediaPeer(pinhole.Inside, in.rtcp, in.src)},
		B: mediarelay.LegSpec{RTP: b, RTCP: netip.AddrPortFrom(b.Addr(), in.pair.RTCPPort),
			Mux: mux, Peer: r.mediaPeer(pinhole.Outside, out.rtp, out.src), PeerRTCP: r.mediaPeer(pinhole.Outside, out.rtcp, out.src)},
		Hold: in.held || out.held,
	}
	// The offerer's pair is shared by the dialogs of a forked call.
	spec.A.Shared = st.offerer == pinhole.Outside
	spec.B.Shared = st.offerer == pinhole.Inside
	if mux {
		spec.A.PeerRTCP, spec.B.PeerRTCP = netip.AddrPort{}, netip.AddrPort{}
	}
	cur, old := st.stream, st.spec
	same := cur != nil && old == spec
	st.spec = spec
	r.mu.Unlock()
	if same {
		return
	}
	if cur != nil && !sameRelayPorts(old, spec) {
		// The answer took rtcp-mux the offer's early stream could not assume: a new stream.
		r.mu.Lock()
		r.retireLocked(cur, old)
		r.mu.Unlock()
		r.media.RemoveStream(cur)
		cur = nil
	}
	if cur != nil {
		if err := r.media.UpdateStream(cur, spec); err != nil {
			r.log.Warn("media stream update", "call", st.callID, "err", err)
		}
		return
	}
	s, err := r.media.AddStream(spec)
	if err != nil {
		r.log.Warn("media stream", "call", st.callID, "err", err)
		return
	}
	r.mu.Lock()
	st.stream = s
	r.mu.Unlock()
}

// sameRelayPorts reports whether two specs use the same relay ports and rtcp-mux, which
// [mediarelay.Relay.UpdateStream] requires.
func sameRelayPorts(a, b mediarelay.StreamSpec) bool {
	same := func(x, y mediarelay.LegSpec) bool { return x.RTP == y.RTP && x.RTCP == y.RTCP && x.Mux == y.Mux }
	return same(a.A, b.A) && same(a.B, b.B)
}

func (r *Relay) hasCall(callID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[callID] != nil
}

func (r *Relay) withCall(callID string, f func(*callState)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.calls[callID]; c != nil {
		f(c)
	}
}

// endCall releases every pair of a call; the media relay's streams go with them (released).
func (r *Relay) endCall(callID string, reason pinhole.Reason) {
	r.m.ReleaseCall(callID, reason)
	r.mu.Lock()
	c := r.calls[callID]
	delete(r.calls, callID)
	r.forgetPassLocked(callID)
	r.mu.Unlock()
	if c == nil {
		return
	}
	for _, st := range c.streams {
		if st.stream != nil {
			r.media.RemoveStream(st.stream)
		}
	}
}

// released is the server map's release callback: a media pair that expired or was replaced
// takes its media relay stream with it.
func (r *Relay) released(b *pinhole.Binding, reason pinhole.Reason) {
	if b.Type() == pinhole.TypeSIP {
		r.mu.Lock()
		delete(r.origTransport, b.Address())
		r.mu.Unlock()
		return
	}
	port := b.Address().Port()
	r.mu.Lock()
	delete(r.retired, b)
	c := r.calls[b.CallID()]
	var gone []*mediarelay.Stream
	if c != nil {
		for k, st := range c.streams {
			for _, l := range append(st.legs[:], &mediaAlloc{pair: st.answer}) {
				if l != nil && (l.pair.RTP.Port() == port || l.pair.RTCPPort == port) && l.pair.RTP.Addr() == b.Address().Addr() {
					if st.stream != nil {
						gone = append(gone, st.stream)
						r.retireLocked(st.stream, st.spec)
					}
					delete(c.streams, k)
					break
				}
			}
		}
		if len(c.streams) == 0 && reason != pinhole.ReasonRenegotiated && reason != pinhole.ReasonForkEnded {
			delete(r.calls, b.CallID())
			r.forgetPassLocked(b.CallID())
		}
	}
	r.mu.Unlock()
	for _, s := range gone {
		r.media.RemoveStream(s)
	}
}

// retireLocked keeps what a stream that goes carried on those of its bindings that live on (the
// offer's pair of a forked call when another dialog's stream stays, a pair whose other side was
// renegotiated), so that their counters keep counting it.
func (r *Relay) retireLocked(s *mediarelay.Stream, spec mediarelay.StreamSpec) {
	stats := s.Stats()
	keep := func(b *pinhole.Binding, c pinhole.Counters, _ time.Time, _ netip.AddrPort) {
		if b.Live() {
			r.retired[b] = sumCounters(r.retired[b], c)
		}
	}
	r.legTraffic(spec.A, stats.A, keep)
	r.legTraffic(spec.B, stats.B, keep)
}

// registered extends the binding of a phone whose registration a 2xx confirmed until the
// registration expires: the binding the response reached stands for the phone.
func (r *Relay) registered(m *rewrite.Message, from pinhole.Side, in inbound) {
	if in.listener {
		return
	}
	b, ok := r.m.Resolve(from, in.local)
	if !ok {
		return
	}
	expires := -1
	if v, ok := m.Header("Expires"); ok {
		if n, err := strconv.Atoi(string(v)); err == nil {
			expires = n
		}
	}
	m.HeaderValues("Contact", func(v []byte) {
		if n, ok := rewrite.ContactExpires(v); ok && n > expires {
			expires = n
		}
	})
	if expires < 0 {
		expires = 3600
	}
	r.m.Registered(b, time.Duration(expires)*time.Second)
}

// mediaEvents receives the media relay's reports.
type mediaEvents Relay

func (e *mediaEvents) Latched(s *mediarelay.Stream, leg mediarelay.Leg, rtcp bool, peer netip.AddrPort) {
	r := (*Relay)(e)
	if b := r.bindingOf(s, leg, rtcp); b != nil {
		b.SetPeer(peer)
	}
}

func (e *mediaEvents) Idle(s *mediarelay.Stream, _ time.Duration) {
	r := (*Relay)(e)
	ringing := false
	r.withCall(s.CallID(), func(c *callState) { ringing = !c.established })
	if st := s.Stats(); ringing || (st.A.LastPacket.IsZero() && st.B.LastPacket.IsZero()) {
		// A call still ringing (its stream is wired from the offer, and early media may pause)
		// or one whose media never started: the server map's setup time decides, which the
		// call's messages renew and, while it rings, its provisional responses (RingCall).
		return
	}
	for _, leg := range []mediarelay.Leg{mediarelay.LegA, mediarelay.LegB} {
		if r.sharedWithOthers(s, leg) {
			continue // the offer's pair of a forked call: another dialog's stream still uses it
		}
		if b := r.bindingOf(s, leg, false); b != nil {
			r.m.Release(b, pinhole.ReasonIdle)
		}
	}
}

// sharedWithOthers reports whether leg's relay port of s also carries another stream of its call
// (the offer's pair, shared by the dialogs of a forked call).
func (r *Relay) sharedWithOthers(s *mediarelay.Stream, leg mediarelay.Leg) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls[s.CallID()]
	if c == nil {
		return false
	}
	var port netip.AddrPort
	for _, st := range c.streams {
		if st.stream == s {
			port = st.spec.A.RTP
			if leg == mediarelay.LegB {
				port = st.spec.B.RTP
			}
		}
	}
	for _, st := range c.streams {
		if st.stream != s && st.stream != nil && (st.spec.A.RTP == port || st.spec.B.RTP == port) {
			return true
		}
	}
	return false
}

// bindingOf returns the server map's binding of a media relay port.
func (r *Relay) bindingOf(s *mediarelay.Stream, leg mediarelay.Leg, rtcp bool) *pinhole.Binding {
	r.mu.Lock()
	var spec mediarelay.LegSpec
	found := false
	if c := r.calls[s.CallID()]; c != nil {
		for _, st := range c.streams {
			if st.stream == s {
				spec, found = st.spec.A, true
				if leg == mediarelay.LegB {
					spec = st.spec.B
				}
			}
		}
	}
	r.mu.Unlock()
	if !found {
		return nil
	}
	port := spec.RTP.Port()
	if rtcp && !spec.Mux {
		port = spec.RTCP.Port()
	}
	return r.m.LookupMedia(port)
}

// maxRinging is how long a call that is not answered yet keeps its media pairs without a
// message: a proxy gives up on an INVITE after Timer C (more than 3 minutes, RFC 3261 section
// 16.6), with a margin.
const maxRinging = 4 * time.Minute

// syncTraffic copies the media relay's counters into the server map every second: the session
// table shows them, and traffic keeps a stream's pairs from expiring.
func (r *Relay) syncTraffic(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.observe()
	}
}

// observed is what a binding carried, summed over the streams that use its port.
type observed struct {
	c       pinhole.Counters
	last    time.Time
	peer    netip.AddrPort
	streams int
}

// observe puts the media relay's counters on the bindings: what a leg's peer sent arrived at
// the leg's ports, what was sent to it left from them. The offer's pair of a forked call carries
// the streams of every early dialog, so a binding gets the sum over its streams, plus what
// streams removed from it carried; it shows its stream's latched peer once it has one stream.
func (r *Relay) observe() {
	type wired struct {
		s    *mediarelay.Stream
		spec mediarelay.StreamSpec
	}
	var ws []wired
	r.mu.Lock()
	for _, c := range r.calls {
		for _, st := range c.streams {
			if st.stream != nil {
				ws = append(ws, wired{st.stream, st.spec})
			}
		}
	}
	r.mu.Unlock()
	acc := make(map[*pinhole.Binding]*observed)
	add := func(b *pinhole.Binding, c pinhole.Counters, last time.Time, peer netip.AddrPort) {
		o := acc[b]
		if o == nil {
			o = &observed{}
			acc[b] = o
		}
		o.c = sumCounters(o.c, c)
		if last.After(o.last) {
			o.last = last
		}
		o.peer = peer
		o.streams++
	}
	for _, w := range ws {
		st := w.s.Stats()
		r.legTraffic(w.spec.A, st.A, add)
		r.legTraffic(w.spec.B, st.B, add)
	}
	r.mu.Lock()
	for b, o := range acc {
		o.c = sumCounters(o.c, r.retired[b])
	}
	r.mu.Unlock()
	for b, o := range acc {
		b.Observe(o.c, o.last)
		if o.streams == 1 && o.peer.IsValid() {
			b.SetPeer(o.peer)
		}
	}
}

// legTraffic calls fn with the bindings of a leg's relay ports and what each carried: RTP on
// the RTP port's, RTCP on the RTCP port's unless the leg is muxed.
func (r *Relay) legTraffic(spec mediarelay.LegSpec, ls mediarelay.LegStats, fn func(*pinhole.Binding, pinhole.Counters, time.Time, netip.AddrPort)) {
	c := pinhole.Counters{
		PacketsReceived: ls.RTP.Packets,
		BytesReceived:   ls.RTP.Bytes,
		PacketsSent:     ls.Sent.Packets - ls.SentRTCP.Packets,
		BytesSent:       ls.Sent.Bytes - ls.SentRTCP.Bytes,
	}
	if spec.Mux {
		c.PacketsReceived += ls.RTCP.Packets // one binding carries both
		c.BytesReceived += ls.RTCP.Bytes
	} else if b := r.m.LookupMedia(spec.RTCP.Port()); b != nil {
		fn(b, pinhole.Counters{PacketsReceived: ls.RTCP.Packets, BytesReceived: ls.RTCP.Bytes,
			PacketsSent: ls.SentRTCP.Packets, BytesSent: ls.SentRTCP.Bytes}, ls.LastPacket, ls.PeerRTCP)
	}
	if b := r.m.LookupMedia(spec.RTP.Port()); b != nil {
		fn(b, c, ls.LastPacket, ls.Peer)
	}
}

func sumCounters(a, b pinhole.Counters) pinhole.Counters {
	return pinhole.Counters{
		PacketsSent:     a.PacketsSent + b.PacketsSent,
		PacketsReceived: a.PacketsReceived + b.PacketsReceived,
		BytesSent:       a.BytesSent + b.BytesSent,
		BytesReceived:   a.BytesReceived + b.BytesReceived,
	}
}
