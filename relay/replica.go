package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
)

// A standby sipcar takes over calls from a replica of the active one's state: per call, its
// media pairs (the server map's) and what the relay knows of it (its dialogs, streams, latched
// peers); per sip binding, the binding, its registration and what the NAT state says of the
// address it stands for. The relay names each as a record, tells a [Replicator] which records
// changed (never waiting for it), hands out a record's current value when asked ([Relay.Record])
// and, on the standby, makes the records' bindings, calls and media streams again
// ([Relay.Restore]). Transactions in flight and TCP/TLS connections are not replicated: a
// request whose answer is lost is retransmitted by its sender (UDP), a connection is opened
// again by its phone.

// Replicator is told which records of the relay's state changed. Changed must not block: it is
// called on the message path and with the server map's lock held.
type Replicator interface {
	// Changed says that the record named key changed, appeared or went. The replicator reads it
	// later with [Relay.Record]; several changes before that are one.
	Changed(key string)
}

// Record key prefixes: a call's record is "call:" and its key in the call table (its Call-ID,
// or a hairpin's crossing), a sip binding's "sig:" and its own address.
const (
	callRecordPrefix = "call:"
	sigRecordPrefix  = "sig:"
)

// replicaCallRecord is a call as a replica keeps it.
type replicaCallRecord struct {
	Map     *pinhole.CallState `json:"map,omitempty"`
	State   *callStateRecord   `json:"state,omitempty"`
	Hairpin *hairpinRecord     `json:"hairpin,omitempty"`
}

type callStateRecord struct {
	Established bool           `json:"established,omitempty"`
	Cancelled   bool           `json:"cancelled,omitempty"`
	Started     time.Time      `json:"started"`
	Caller      pinhole.Side   `json:"caller,omitzero"`
	CallerTag   string         `json:"caller_tag,omitempty"`
	Streams     []streamRecord `json:"streams,omitempty"`
}

type streamRecord struct {
	Fork    string        `json:"fork,omitempty"`
	Part    int           `json:"part"`
	Index   int           `json:"index"`
	Offerer pinhole.Side  `json:"offerer,omitzero"`
	Inside  *allocRecord  `json:"inside,omitempty"`
	Outside *allocRecord  `json:"outside,omitempty"`
	Answer  *pinhole.Pair `json:"answer,omitempty"`
	// Spec is what the media relay forwards, when it does.
	Spec *mediarelay.StreamSpec `json:"spec,omitempty"`
}

type allocRecord struct {
	From  pinhole.Side   `json:"from"`
	Src   netip.AddrPort `json:"src,omitzero"`
	Next  netip.AddrPort `json:"next,omitzero"`
	Fork  string         `json:"fork,omitempty"`
	Part  int            `json:"part"`
	Index int            `json:"index"`
	Pair  pinhole.Pair   `json:"pair"`
	RTP   netip.AddrPort `json:"rtp,omitzero"`
	RTCP  netip.AddrPort `json:"rtcp,omitzero"`
	Mux   bool           `json:"mux,omitempty"`
	Held  bool           `json:"held,omitempty"`
}

type hairpinRecord struct {
	CallID string         `json:"call_id"`
	Party  netip.AddrPort `json:"party"`
}

// sigRecord is a sip binding as a replica keeps it, with what the NAT state knows of the address
// it stands for.
type sigRecord struct {
	pinhole.SignalingState
	// OrigTransport is the transport that reaches ForwardTo when it is not the binding's own.
	OrigTransport string `json:"orig_transport,omitempty"`
	// Aliases are the Vias a sender behind a NAT at ForwardTo wrote.
	Aliases []netip.AddrPort `json:"aliases,omitempty"`
	// Contact is the host and port the phone wrote in its REGISTER's Contact (see
	// [msgTranslator.TranslateWritten]).
	Contact string `json:"contact,omitempty"`
}

// mapChanged is the server map's change hook: it names the record to the replicator.
func (r *Relay) mapChanged(c pinhole.Change) {
	if c.Call != "" {
		r.cfg.Replica.Changed(callRecordPrefix + c.Call)
		return
	}
	r.cfg.Replica.Changed(sigRecordPrefix + c.Signaling.String())
}

// changedCallState tells the replicator that the call state of key may have changed.
func (r *Relay) changedCallState(key string) {
	if r.calls.has(key) {
		r.cfg.Replica.Changed(callRecordPrefix + key)
	}
}

// changedSig tells the replicator that what the relay keeps of sip binding b changed.
func (r *Relay) changedSig(b *pinhole.Binding) {
	if r.cfg.Replica != nil {
		r.cfg.Replica.Changed(sigRecordPrefix + b.Address().String())
	}
}

// Keys returns the names of every record there is now: for a replica's full copy.
func (r *Relay) Keys() []string {
	ids := r.m.CallIDs()
	ids = append(ids, r.calls.keys()...)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	keys := make([]string, 0, len(ids))
	for _, id := range ids {
		keys = append(keys, callRecordPrefix+id)
	}
	for _, a := range r.m.SignalingAddrs() {
		keys = append(keys, sigRecordPrefix+a.String())
	}
	return keys
}

// Record returns the current value of the record named key, or false when it is gone. It is safe
// to call at any time from any goroutine.
func (r *Relay) Record(key string) ([]byte, bool) {
	if id, ok := strings.CutPrefix(key, callRecordPrefix); ok {
		var rec replicaCallRecord
		if cs, ok := r.m.ExportCall(id); ok {
			rec.Map = &cs
		}
		rec.State, rec.Hairpin = r.calls.export(id)
		if rec.Map == nil && rec.State == nil {
			return nil, false
		}
		b, err := json.Marshal(rec)
		if err != nil {
			r.log.Error("replica: call record", "call", id, "err", err)
			return nil, false
		}
		return b, true
	}
	if a, ok := strings.CutPrefix(key, sigRecordPrefix); ok {
		addr, err := netip.ParseAddrPort(a)
		if err != nil {
			return nil, false
		}
		ss, ok := r.m.ExportSignaling(addr)
		if !ok {
			return nil, false
		}
		rec := sigRecord{SignalingState: ss, OrigTransport: r.nat.recordedTransport(addr),
			Aliases: r.nat.viasOf(ss.Faces.Other(), ss.ForwardTo)}
		rec.Contact, _ = r.nat.contact(addr)
		b, err := json.Marshal(rec)
		if err != nil {
			r.log.Error("replica: sip binding record", "binding", addr, "err", err)
			return nil, false
		}
		return b, true
	}
	return nil, false
}

// RestoreReport says what [Relay.Restore] made again.
type RestoreReport struct {
	Calls, Signaling, Streams int
	// Failed names the records that could not be restored, with why.
	Failed map[string]error
}

// Restore makes the bindings, calls and media streams of a replica's records again, on the
// ports they had, with their latched peers: the records are what a standby's copy holds when it
// takes over. Call it after [New] and before [Relay.Run] opens the listeners. A record that
// cannot be restored (a port taken, a record that does not parse) is skipped and reported; the
// others are restored all the same.
func (r *Relay) Restore(records map[string][]byte) RestoreReport {
	rep := RestoreReport{Failed: map[string]error{}}
	keys := make([]string, 0, len(records))
	for k := range records {
		keys = append(keys, k)
	}
	// The sip bindings first: an in-dialog request for a restored call routes through them.
	slices.SortFunc(keys, func(a, b string) int {
		if c := boolCmp(strings.HasPrefix(a, callRecordPrefix), strings.HasPrefix(b, callRecordPrefix)); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	for _, k := range keys {
		v := records[k]
		switch {
		case strings.HasPrefix(k, sigRecordPrefix):
			if err := r.restoreSig(v); err != nil {
				rep.Failed[k] = err
				continue
			}
			rep.Signaling++
		case strings.HasPrefix(k, callRecordPrefix):
			n, err := r.restoreCall(strings.TrimPrefix(k, callRecordPrefix), v)
			if err != nil {
				rep.Failed[k] = err
				continue
			}
			rep.Calls++
			rep.Streams += n
		default:
			rep.Failed[k] = errors.New("not a record of the relay")
		}
	}
	return rep
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func (r *Relay) restoreSig(v []byte) error {
	var rec sigRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return fmt.Errorf("sip binding record: %w", err)
	}
	b, err := r.m.RestoreSignaling(rec.SignalingState)
	if err != nil {
		return err
	}
	if rec.OrigTransport != "" {
		r.nat.noteTransport(b, rec.OrigTransport)
	}
	for _, via := range rec.Aliases {
		r.nat.setAlias(rec.Faces.Other(), via, rec.ForwardTo)
	}
	if rec.Contact != "" {
		r.nat.noteContact(b, []byte(rec.Contact))
	}
	return nil
}

// restoreCall restores one call and returns how many media streams it gave the media relay.
func (r *Relay) restoreCall(key string, v []byte) (int, error) {
	var rec replicaCallRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return 0, fmt.Errorf("call record: %w", err)
	}
	if rec.Map != nil && len(rec.Map.Streams) > 0 {
		if rec.Map.ID != key {
			return 0, fmt.Errorf("call record of %q names call %q", key, rec.Map.ID)
		}
		if err := r.m.RestoreCall(*rec.Map); err != nil {
			return 0, err
		}
	}
	if rec.State == nil {
		return 0, nil
	}
	return r.calls.restore(key, rec.State, rec.Hairpin), nil
}

// keys returns the keys of the call table.
func (ct *callTable) keys() []string {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	out := make([]string, 0, len(ct.calls))
	for k := range ct.calls {
		out = append(out, k)
	}
	return out
}

// export returns what the call table knows of call key, and the hairpin crossing key is.
func (ct *callTable) export(key string) (*callStateRecord, *hairpinRecord) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	var hp *hairpinRecord
	if hk, ok := ct.hairpinOf[key]; ok {
		hp = &hairpinRecord{CallID: hk.callID, Party: hk.party}
	}
	c := ct.calls[key]
	if c == nil {
		return nil, hp
	}
	rec := &callStateRecord{Established: c.established, Cancelled: c.cancelled, Started: c.started.UTC(),
		Caller: c.caller, CallerTag: c.callerTag}
	for k, st := range c.streams {
		sr := streamRecord{Fork: k.fork, Part: k.part, Index: k.index, Offerer: st.offerer,
			Inside: allocOf(st.legs[pinhole.Inside]), Outside: allocOf(st.legs[pinhole.Outside])}
		if st.answer.RTP.IsValid() {
			a := st.answer
			sr.Answer = &a
		}
		if st.stream != nil {
			spec := st.spec
			sr.Spec = &spec
		}
		rec.Streams = append(rec.Streams, sr)
	}
	slices.SortFunc(rec.Streams, func(a, b streamRecord) int {
		if a.Part != b.Part {
			return a.Part - b.Part
		}
		if a.Index != b.Index {
			return a.Index - b.Index
		}
		return strings.Compare(a.Fork, b.Fork)
	})
	return rec, hp
}

func allocOf(a *mediaAlloc) *allocRecord {
	if a == nil {
		return nil
	}
	return &allocRecord{From: a.from, Src: a.src, Next: a.next, Fork: a.fork, Part: a.part, Index: a.index, Pair: a.pair,
		RTP: a.rtp, RTCP: a.rtcp, Mux: a.mux, Held: a.held}
}

func (a *allocRecord) alloc() *mediaAlloc {
	if a == nil {
		return nil
	}
	return &mediaAlloc{from: a.From, src: a.Src, next: a.Next, fork: a.Fork, part: a.Part, index: a.Index, pair: a.Pair,
		rtp: a.RTP, rtcp: a.RTCP, mux: a.Mux, held: a.Held}
}

// restore enters a replicated call in the table and gives its streams to the media relay,
// latched as the server map's bindings say. It returns how many streams the media relay took.
func (ct *callTable) restore(key string, rec *callStateRecord, hp *hairpinRecord) int {
	c := &callState{established: rec.Established, cancelled: rec.Cancelled, started: rec.Started, caller: rec.Caller,
		callerTag: rec.CallerTag, streams: make(map[streamKey]*relayedStream, len(rec.Streams))}
	var wire []*relayedStream
	for _, sr := range rec.Streams {
		st := &relayedStream{callID: key, offerer: sr.Offerer}
		st.legs[pinhole.Inside], st.legs[pinhole.Outside] = sr.Inside.alloc(), sr.Outside.alloc()
		if sr.Answer != nil {
			st.answer = *sr.Answer
		}
		if sr.Spec != nil {
			st.spec = *sr.Spec
			wire = append(wire, st)
		}
		c.streams[streamKey{fork: sr.Fork, part: sr.Part, index: sr.Index}] = st
	}
	ct.mu.Lock()
	ct.calls[key] = c
	if hp != nil {
		hk := hairpinKey{callID: hp.CallID, party: hp.Party}
		ct.hairpins[hk] = key
		ct.hairpinOf[key] = hk
	}
	ct.mu.Unlock()
	n := 0
	for _, st := range wire {
		s, err := ct.media.AddStream(st.spec)
		if err != nil {
			ct.log.Warn("replica: media stream not restored", "call", key, "err", err)
			continue
		}
		ct.latch(s, mediarelay.LegA, st.spec.A)
		ct.latch(s, mediarelay.LegB, st.spec.B)
		ct.mu.Lock()
		st.stream = s
		ct.mu.Unlock()
		n++
	}
	return n
}

// latch latches a restored stream's leg on the peers its server map bindings had latched.
func (ct *callTable) latch(s *mediarelay.Stream, leg mediarelay.Leg, spec mediarelay.LegSpec) {
	ports := []netip.AddrPort{spec.RTP}
	if !spec.Mux {
		ports = append(ports, spec.RTCP)
	}
	for i, port := range ports {
		b := ct.m.LookupMedia(port.Port())
		if b == nil {
			continue
		}
		if peer, ok := b.Peer(); ok {
			if err := ct.media.Latch(s, leg, i == 1, peer); err != nil {
				ct.log.Warn("replica: latch not restored", "call", s.CallID(), "leg", leg, "err", err)
			}
		}
	}
}
