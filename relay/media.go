package relay

import (
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// update records the pairs a message's SDP was given, marks held and dropped streams,
// and hands streams whose two sides are known to the media relay.
func (ct *callTable) update(callID string, t *msgTranslator, from pinhole.Side, res *rewrite.Result, initial bool, fromTag []byte) {
	ct.mu.Lock()
	c := ct.calls[callID]
	if c == nil {
		if len(t.media) == 0 {
			ct.mu.Unlock()
			return
		}
		c = &callState{streams: make(map[streamKey]*relayedStream), started: time.Now()}
		ct.calls[callID] = c
	}
	if initial && c.callerTag == "" && len(fromTag) > 0 {
		c.caller, c.callerTag = from, string(fromTag)
	}
	var ready []*relayedStream
	for i := range t.media {
		a := t.media[i]
		a.rtpmap = rtpmapOf(res, &a)
		for _, st := range c.streamsFor(callID, &a) {
			st.legs[a.from] = &a
			if st.legs[pinhole.Inside] != nil && st.legs[pinhole.Outside] != nil {
				st.answer = pinhole.Pair{}
				ready = append(ready, st)
			} else if p, ok := ct.m.AnswerPair(callID, a.part, a.index); ok {
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
	ct.mu.Unlock()
	for _, st := range ready {
		ct.wire(st)
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
		st = &relayedStream{callID: callID, offerer: c.caller, index: a.index}
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
func (ct *callTable) wire(st *relayedStream) {
	ct.mu.Lock()
	in, out := st.legs[pinhole.Inside], st.legs[pinhole.Outside]
	if in == nil || out == nil {
		if !st.answer.RTP.IsValid() {
			ct.mu.Unlock()
			return
		}
		// Only the offer is known: the answer's reserved pair, its peer learned from its packets.
		// The answerer is where the offer went: until it answers, only its packets are taken.
		if in == nil {
			in = &mediaAlloc{pair: st.answer, src: out.next}
		} else {
			out = &mediaAlloc{pair: st.answer, src: in.next}
		}
	}
	mux := in.mux && out.mux
	a, b := ct.bindAddr(out.pair.RTP), ct.bindAddr(in.pair.RTP)
	spec := mediarelay.StreamSpec{
		CallID: st.callID,
		A: mediarelay.LegSpec{RTP: a, RTCP: netip.AddrPortFrom(a.Addr(), out.pair.RTCPPort),
			Mux: mux, Peer: ct.peer(pinhole.Inside, in.rtp, in.src), PeerRTCP: ct.peer(pinhole.Inside, in.rtcp, in.src),
			Signal: in.src.Addr(), Unanswered: st.legs[pinhole.Inside] == nil},
		B: mediarelay.LegSpec{RTP: b, RTCP: netip.AddrPortFrom(b.Addr(), in.pair.RTCPPort),
			Mux: mux, Peer: ct.peer(pinhole.Outside, out.rtp, out.src), PeerRTCP: ct.peer(pinhole.Outside, out.rtcp, out.src),
			Signal: out.src.Addr(), Unanswered: st.legs[pinhole.Outside] == nil},
		Hold:         in.held || out.held,
		PayloadTypes: payloadTypes(in.rtpmap, out.rtpmap),
		Secure:       in.secure || out.secure,
	}
	// The offerer's pair is shared by the dialogs of a forked call.
	spec.A.Shared = st.offerer == pinhole.Outside
	spec.B.Shared = st.offerer == pinhole.Inside
	if mux {
		spec.A.PeerRTCP, spec.B.PeerRTCP = netip.AddrPort{}, netip.AddrPort{}
	}
	cur, old := st.stream, st.spec
	same := cur != nil && sameSpec(old, spec)
	st.spec = spec
	ct.mu.Unlock()
	if same {
		return
	}
	if cur != nil && !sameRelayPorts(old, spec) {
		// The answer took rtcp-mux the offer's early stream could not assume: a new stream.
		ct.mu.Lock()
		ct.retireLocked(cur, old, st.index)
		ct.mu.Unlock()
		ct.media.RemoveStream(cur)
		cur = nil
	}
	if cur != nil {
		if err := ct.media.UpdateStream(cur, spec); err != nil {
			ct.log.Warn("media stream update", "call", st.callID, "err", err)
		}
		return
	}
	s, err := ct.media.AddStream(spec)
	if err != nil {
		ct.log.Warn("media stream", "call", st.callID, "err", err)
		return
	}
	ct.mu.Lock()
	st.stream = s
	count := false
	if c := ct.calls[st.callID]; c != nil && !c.counted {
		c.counted, count = true, true
	}
	ct.mu.Unlock()
	if count && ct.callsByFamily != nil {
		ct.callsByFamily.WithLabelValues(familyName(spec.B.RTP.Addr()), familyName(spec.A.RTP.Addr())).Inc()
	}
}

// familyName names an address's IP family as the metrics do.
func familyName(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "ipv4"
	}
	return "ipv6"
}

// rtpmapOf returns a copy of the a=rtpmap lines of the SDP section a pair was allocated for.
func rtpmapOf(res *rewrite.Result, a *mediaAlloc) []rewrite.RTPMap {
	for i, s := range res.Streams {
		if s.Part == a.part && s.Index == a.index {
			return slices.Clone(res.RTPMap(i))
		}
	}
	return nil
}

// payloadTypes are a stream's payload types for the media relay: those of both sides' SDP, the
// inside's first where both name a number (each side names what it receives, and almost every
// peer answers with the offer's numbers).
func payloadTypes(in, out []rewrite.RTPMap) []mediarelay.PayloadType {
	var pts []mediarelay.PayloadType
	for _, m := range slices.Concat(in, out) {
		if !slices.ContainsFunc(pts, func(p mediarelay.PayloadType) bool { return p.Type == m.Type }) {
			pts = append(pts, mediarelay.PayloadType{Type: m.Type, Encoding: m.Encoding, ClockRate: m.ClockRate})
		}
	}
	return pts
}

// sameSpec reports whether two specs are equal (their payload types make them incomparable
// with ==).
func sameSpec(a, b mediarelay.StreamSpec) bool { return reflect.DeepEqual(a, b) }

// sameRelayPorts reports whether two specs use the same relay ports and rtcp-mux, which
// [mediarelay.Relay.UpdateStream] requires.
func sameRelayPorts(a, b mediarelay.StreamSpec) bool {
	same := func(x, y mediarelay.LegSpec) bool { return x.RTP == y.RTP && x.RTCP == y.RTCP && x.Mux == y.Mux }
	return same(a.A, b.A) && same(a.B, b.B)
}

// retireLocked keeps what a stream that goes carried on those of its bindings that live on (the
// offer's pair of a forked call when another dialog's stream stays, a pair whose other side was
// renegotiated), so that their counters keep counting it.
func (ct *callTable) retireLocked(s *mediarelay.Stream, spec mediarelay.StreamSpec, index int) {
	stats := s.Stats()
	ct.diag.streamEnded(s.CallID(), streamNote{index: index, spec: spec, stats: stats})
	keep := func(b *pinhole.Binding, c pinhole.Counters, _ time.Time, _ netip.AddrPort) {
		if b.Live() {
			ct.retired[b] = sumCounters(ct.retired[b], c)
		}
	}
	ct.legTraffic(spec.A, stats.A, keep)
	ct.legTraffic(spec.B, stats.B, keep)
}

// mediaEvents receives the media relay's reports.
type mediaEvents Relay

func (e *mediaEvents) Latched(s *mediarelay.Stream, leg mediarelay.Leg, rtcp bool, peer netip.AddrPort) {
	r := (*Relay)(e)
	if b := r.calls.bindingOf(s, leg, rtcp); b != nil {
		b.SetPeer(peer)
	}
}

func (e *mediaEvents) Traffic(s *mediarelay.Stream, st mediarelay.StreamStats) {
	(*Relay)(e).calls.traffic(s, st)
}

func (e *mediaEvents) Idle(s *mediarelay.Stream, _ time.Duration) {
	r := (*Relay)(e)
	ringing := false
	r.calls.with(s.CallID(), func(c *callState) { ringing = !c.established })
	if st := s.Stats(); ringing || (st.A.LastPacket.IsZero() && st.B.LastPacket.IsZero()) {
		// A call still ringing (its stream is wired from the offer, and early media may pause)
		// or one whose media never started: the server map's setup time decides, which the
		// call's messages renew and, while it rings, its provisional responses (RingCall).
		return
	}
	for _, leg := range []mediarelay.Leg{mediarelay.LegA, mediarelay.LegB} {
		if r.calls.sharedWithOthers(s, leg) {
			continue // the offer's pair of a forked call: another dialog's stream still uses it
		}
		if b := r.calls.bindingOf(s, leg, false); b != nil {
			r.m.Release(b, pinhole.ReasonIdle)
		}
	}
}

// sharedWithOthers reports whether leg's relay port of s also carries another stream of its call
// (the offer's pair, shared by the dialogs of a forked call).
func (ct *callTable) sharedWithOthers(s *mediarelay.Stream, leg mediarelay.Leg) bool {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	c := ct.calls[s.CallID()]
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
func (ct *callTable) bindingOf(s *mediarelay.Stream, leg mediarelay.Leg, rtcp bool) *pinhole.Binding {
	ct.mu.Lock()
	var spec mediarelay.LegSpec
	found := false
	if c := ct.calls[s.CallID()]; c != nil {
		for _, st := range c.streams {
			if st.stream == s {
				spec, found = st.spec.A, true
				if leg == mediarelay.LegB {
					spec = st.spec.B
				}
			}
		}
	}
	ct.mu.Unlock()
	if !found {
		return nil
	}
	port := spec.RTP.Port()
	if rtcp && !spec.Mux {
		port = spec.RTCP.Port()
	}
	return ct.m.LookupMedia(port)
}

// maxRinging is how long a call that is not answered yet keeps its media pairs without a
// message: a proxy gives up on an INVITE after Timer C (more than 3 minutes, RFC 3261 section
// 16.6), with a margin.
const maxRinging = 4 * time.Minute

// observed is what a binding carried, summed over the streams that use its port.
type observed struct {
	c       pinhole.Counters
	last    time.Time
	peer    netip.AddrPort
	streams int
}

// traffic is the media relay's report of a stream's counters (pushed, at most once a sweep and
// only when packets came): they go on the bindings of the stream's call. What a leg's peer sent
// arrived at the leg's ports, what was sent to it left from them. The offer's pair of a forked
// call carries the streams of every early dialog, so a binding gets the sum over the streams of
// its call that use it (as each last reported), plus what streams removed from it carried; it
// shows its stream's latched peer once it has one stream.
func (ct *callTable) traffic(s *mediarelay.Stream, stats mediarelay.StreamStats) {
	type wired struct {
		spec  mediarelay.StreamSpec
		stats mediarelay.StreamStats
	}
	var ws []wired
	ct.mu.Lock()
	c := ct.calls[s.CallID()]
	if c == nil {
		ct.mu.Unlock()
		return
	}
	for _, st := range c.streams {
		if st.stream == s {
			st.stats = stats
		}
		if st.stream != nil {
			ws = append(ws, wired{st.spec, st.stats})
		}
	}
	ct.mu.Unlock()
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
		ct.legTraffic(w.spec.A, w.stats.A, add)
		ct.legTraffic(w.spec.B, w.stats.B, add)
	}
	ct.mu.Lock()
	for b, o := range acc {
		o.c = sumCounters(o.c, ct.retired[b])
	}
	ct.mu.Unlock()
	for b, o := range acc {
		b.Observe(o.c, o.last)
		if o.streams == 1 && o.peer.IsValid() {
			b.SetPeer(o.peer)
		}
	}
	// The quality of what a leg's peer sent goes on its RTP binding, unless that carries
	// several streams (the offer's pair of a forked call), whose figures do not add up.
	for _, w := range ws {
		for _, leg := range [...]struct {
			spec  mediarelay.LegSpec
			stats *mediarelay.LegStats
		}{{w.spec.A, &w.stats.A}, {w.spec.B, &w.stats.B}} {
			b := ct.m.LookupMedia(leg.spec.RTP.Port())
			if o := acc[b]; b != nil && o != nil && o.streams == 1 && leg.stats.RTP.Expected > 0 {
				b.SetQuality(leg.stats.Quality())
			}
		}
	}
}

// legTraffic calls fn with the bindings of a leg's relay ports and what each carried: RTP on
// the RTP port's, RTCP on the RTCP port's unless the leg is muxed.
func (ct *callTable) legTraffic(spec mediarelay.LegSpec, ls mediarelay.LegStats, fn func(*pinhole.Binding, pinhole.Counters, time.Time, netip.AddrPort)) {
	c := pinhole.Counters{
		PacketsReceived: ls.RTP.Packets,
		BytesReceived:   ls.RTP.Bytes,
		PacketsSent:     ls.Sent.Packets - ls.SentRTCP.Packets,
		BytesSent:       ls.Sent.Bytes - ls.SentRTCP.Bytes,
	}
	if spec.Mux {
		c.PacketsReceived += ls.RTCP.Packets // one binding carries both
		c.BytesReceived += ls.RTCP.Bytes
	} else if b := ct.m.LookupMedia(spec.RTCP.Port()); b != nil {
		fn(b, pinhole.Counters{PacketsReceived: ls.RTCP.Packets, BytesReceived: ls.RTCP.Bytes,
			PacketsSent: ls.SentRTCP.Packets, BytesSent: ls.SentRTCP.Bytes}, ls.LastPacket, ls.PeerRTCP)
	}
	if b := ct.m.LookupMedia(spec.RTP.Port()); b != nil {
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
