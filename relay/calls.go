package relay

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// callTable is what the relay remembers of calls: enough to allocate and release their media at
// the right moments (not a dialog state machine: sipcar is no B2BUA), to tell the dialogs of a
// forked call and the two crossings of a hairpinned one apart, and to hand the media relay each
// stream once both its sides are known.
type callTable struct {
	m     *pinhole.Map
	media *mediarelay.Relay
	log   *slog.Logger
	// hairpin: a call may cross sipcar twice (upstream mode; see passOf).
	hairpin bool
	// bindAddr maps an advertised address to the local one that stands for it; peer says where a
	// leg may send before it learns its peer ([Relay.mediaPeer]).
	bindAddr func(netip.AddrPort) netip.AddrPort
	peer     func(from pinhole.Side, sdp, signaled netip.AddrPort) netip.AddrPort

	mu    sync.Mutex // guards the following, and the callStates and relayedStreams they hold
	calls map[string]*callState
	// hairpins names the second crossing of calls that hairpin (see passOf): by Call-ID and
	// outside party, the key its call state has; hairpinOf the other way round.
	hairpins  map[hairpinKey]string
	hairpinOf map[string]hairpinKey
	// retired is, per media binding, what streams removed from it carried (see observe).
	retired map[*pinhole.Binding]pinhole.Counters
	// diag is the doctor's call log: it keeps the last counters of removed streams and when
	// calls end.
	diag *callLog
	// calls counts calls by the families of their parties (sipcar_calls_total).
	callsByFamily *prometheus.CounterVec

	// changed, when set, is told the key of a call whose state went (see [Replicator]).
	changed func(key string)
}

func newCallTable(m *pinhole.Map, media *mediarelay.Relay, log *slog.Logger, hairpin bool,
	bindAddr func(netip.AddrPort) netip.AddrPort, peer func(pinhole.Side, netip.AddrPort, netip.AddrPort) netip.AddrPort) *callTable {
	return &callTable{m: m, media: media, log: log, hairpin: hairpin, bindAddr: bindAddr, peer: peer,
		calls: make(map[string]*callState), hairpins: make(map[hairpinKey]string),
		hairpinOf: make(map[string]hairpinKey), retired: make(map[*pinhole.Binding]pinhole.Counters)}
}

// callState is what the relay remembers of a call: enough to allocate and release its media at
// the right moments, not a dialog state machine (sipcar is no B2BUA).
type callState struct {
	established bool // a 2xx answered the initial INVITE
	cancelled   bool // a CANCEL passed
	counted     bool // in sipcar_calls_total
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
	index   int            // the m= line's position in its SDP
	offerer pinhole.Side   // the caller's side, whose pair the forks share; 0 when not known
	legs    [3]*mediaAlloc // by pinhole.Side
	// answer is the pair reserved with the offer for its answer, while only the offer is known:
	// the stream is wired with it so that the answerer's early packets reach the offerer.
	answer pinhole.Pair
	stream *mediarelay.Stream
	spec   mediarelay.StreamSpec
	// stats is what the media relay last reported of stream (see traffic).
	stats mediarelay.StreamStats
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
func (ct *callTable) forkOf(callID string, from pinhole.Side, m *rewrite.Message) string {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	c := ct.calls[callID]
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
func (ct *callTable) passOf(callID string, from pinhole.Side, src, next netip.AddrPort, m *rewrite.Message) string {
	if !ct.hairpin {
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
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if k, ok := ct.hairpins[hk]; ok {
		return k
	}
	if from != pinhole.Inside || !m.IsRequest() || string(m.Method()) != "INVITE" || len(m.ToTag()) > 0 {
		return callID
	}
	if c := ct.calls[callID]; c == nil || c.caller != pinhole.Outside {
		return callID
	}
	// The call's initial INVITE came in from outside and now goes back out: a hairpin.
	if len(ct.hairpins) >= maxHairpins {
		clear(ct.hairpins)
		clear(ct.hairpinOf)
	}
	k := callID + " to " + party.String()
	ct.hairpins[hk] = k
	ct.hairpinOf[k] = hk
	return k
}

// forgetPassLocked drops the hairpin entry of a crossing whose call state is gone.
func (ct *callTable) forgetPassLocked(key string) {
	if hk, ok := ct.hairpinOf[key]; ok {
		delete(ct.hairpins, hk)
		delete(ct.hairpinOf, key)
	}
}

func (ct *callTable) has(callID string) bool {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return ct.calls[callID] != nil
}

func (ct *callTable) with(callID string, f func(*callState)) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if c := ct.calls[callID]; c != nil {
		f(c)
	}
}

// offeredAddr returns the address side's SDP named for a call's stream (part, index), when
// known: what an answer's pair toward that side takes the family of.
func (ct *callTable) offeredAddr(callID string, side pinhole.Side, part, index int) netip.Addr {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	c := ct.calls[callID]
	if c == nil {
		return netip.Addr{}
	}
	for k, st := range c.streams {
		if k.part == part && k.index == index && st.legs[side] != nil {
			return st.legs[side].rtp.Addr()
		}
	}
	return netip.Addr{}
}

// liveStreams returns the spec and current counters of a call's streams that the media relay
// forwards.
func (ct *callTable) liveStreams(callID string) []streamNote {
	ct.mu.Lock()
	var streams []*relayedStream
	if c := ct.calls[callID]; c != nil {
		for _, st := range c.streams {
			if st.stream != nil {
				streams = append(streams, st)
			}
		}
	}
	out := make([]streamNote, len(streams))
	for i, st := range streams {
		out[i] = streamNote{index: st.index, spec: st.spec, stats: st.stream.Stats()}
	}
	ct.mu.Unlock()
	sortStreams(out)
	return out
}

// count returns how many calls hold media.
func (ct *callTable) count() int {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return len(ct.calls)
}

// end releases every pair of a call; the media relay's streams go with them (released).
func (ct *callTable) end(callID string, reason pinhole.Reason) {
	ct.diag.callEnded(callID, reason, time.Now())
	ct.m.ReleaseCall(callID, reason)
	ct.mu.Lock()
	c := ct.calls[callID]
	delete(ct.calls, callID)
	ct.forgetPassLocked(callID)
	ct.mu.Unlock()
	if c == nil {
		return
	}
	if ct.changed != nil {
		ct.changed(callID)
	}
	for _, st := range c.streams {
		if st.stream != nil {
			ct.media.RemoveStream(st.stream)
		}
	}
}

// released takes the media relay stream of a media pair that expired or was replaced with it.
func (ct *callTable) released(b *pinhole.Binding, reason pinhole.Reason) {
	port := b.Address().Port()
	ct.mu.Lock()
	delete(ct.retired, b)
	c := ct.calls[b.CallID()]
	var gone []*mediarelay.Stream
	if c != nil {
		for k, st := range c.streams {
			for _, l := range append(st.legs[:], &mediaAlloc{pair: st.answer}) {
				if l != nil && (l.pair.RTP.Port() == port || l.pair.RTCPPort == port) && l.pair.RTP.Addr() == b.Address().Addr() {
					if st.stream != nil {
						gone = append(gone, st.stream)
						ct.retireLocked(st.stream, st.spec, st.index)
					}
					delete(c.streams, k)
					break
				}
			}
		}
		if len(c.streams) == 0 && reason != pinhole.ReasonRenegotiated && reason != pinhole.ReasonForkEnded {
			delete(ct.calls, b.CallID())
			ct.forgetPassLocked(b.CallID())
			ct.diag.callEnded(b.CallID(), reason, time.Now())
		}
	}
	ct.mu.Unlock()
	if c != nil && ct.changed != nil {
		ct.changed(b.CallID())
	}
	for _, s := range gone {
		ct.media.RemoveStream(s)
	}
}
