package pinhole

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/sipcar/sipcar/rewrite"
)

// MediaRequest asks for the pair of one media stream that one side advertised in an SDP body.
type MediaRequest struct {
	// From is the side the SDP came from; the pair is on From.Other().
	From Side
	// Part and Index name the stream: the SDP body within the message and the m= line within it
	// (package rewrite's Stream.Part and Stream.Index).
	Part, Index int
	// RTP and RTCP are where the sender wants the stream's RTP and RTCP: the pair forwards there.
	// An invalid RTCP means RTP's address and port + 1.
	RTP, RTCP netip.AddrPort
	// Mux: the sender offered or accepted a=rtcp-mux. The pair keeps its RTCP port regardless.
	Mux bool
	// Held: the stream is sendonly, recvonly or inactive. A held stream does not expire while
	// its call lives.
	Held bool
	// Fork names the dialog an answering side's SDP belongs to: the tag of the answering side
	// (the To tag of a response to the initial INVITE), "" for the offerer's SDP. When the
	// stream's leg from From already answers for another dialog, the call forked: this dialog's
	// leg gets a pair of its own beside it instead of replacing it (see [Map.SettleFork]).
	Fork string
	// Toward is an address of the peer the SDP goes to: the pair is sipcar's address of its
	// family (an IPv6 phone is given IPv6 media addresses for an IPv4 PBX's stream). Back is one
	// of the sender's: the pair reserved for the answer, which goes back to it, takes its family.
	// The zero Addr means the family of RTP.
	Toward, Back netip.Addr
}

// like returns a if it is valid, else or.
func like(a, or netip.Addr) netip.Addr {
	if a.IsValid() {
		return a
	}
	return or
}

// MaxForks is how many further early dialogs of a forked call get a pair of their own beside
// the first answer's; the answer of one more fails with ErrCallLimit.
const MaxForks = 15

// Pair is the address a relayed stream is advertised at on the far side (sipcar's address and
// even RTP port, the RTCP port one above): package rewrite's MediaBinding, which the rewriter
// writes into the SDP.
type Pair = rewrite.MediaBinding

// Tx allocates the media pairs of one message, all or none: nothing it allocates is visible or
// takes effect until Commit, and Rollback gives every port back. Use one Tx per message, from one
// goroutine:
//
//	tx := m.Begin(callID, source)
//	defer tx.Rollback() // no-op after Commit
//	... tx.Media(req) for each relayed stream, tx.Hold, tx.Drop ...
//	err := tx.Commit()
type Tx struct {
	m      *Map
	callID string
	source netip.Addr
	call   *call // set by the first request that needs it; holds a reference (call.txs)
	legs   []pendingLeg
	holds  []pendingHold
	drops  []streamKey
	done   bool
}

type pendingLeg struct {
	key       streamKey
	from      Side
	rtp, rtcp *Binding
	reused    bool // rtp and rtcp are the stream's live leg, not new
	mux, held bool
	fork      string
	// adopted is the stream's answer pair that rtp and rtcp take over (new bindings on its
	// ports and reservations); spare is the answer pair this offer reserves for a new stream.
	adopted *Binding
	spare   leg
}

type pendingHold struct {
	key  streamKey
	from Side
}

// Begin opens a transaction for a message of the call callID. source is the address the call's
// first message came from, for the per-source cap; the zero Addr exempts the call from that cap
// (the relay passes it for its configured upstream).
func (m *Map) Begin(callID string, source netip.Addr) *Tx {
	return &Tx{m: m, callID: callID, source: source}
}

// Media returns the pair for the stream req describes. If the stream's leg from req.From exists
// and forwards to the same addresses, it is kept (and its hold state updated at Commit);
// otherwise a new pair is allocated, which replaces the old at Commit (the old is released then,
// ReasonRenegotiated).
//
// With Config.ReserveAnswerPair the offer that starts a stream also reserves the pair its answer
// will get (see [Map.AnswerPair]): the answerer's media often reaches sipcar before its answer
// does, and the media relay forwards it through that pair meanwhile. The first answer takes it
// over. Errors: ErrInvalid, ErrNoPorts, ErrNoDescriptors, ErrCallLimit, ErrStreamLimit,
// ErrPortLimit, ErrCallEnded, ErrClosed, ErrTxDone; after an error the caller rolls the transaction back.
func (tx *Tx) Media(req MediaRequest) (Pair, error) {
	if tx.done {
		return Pair{}, ErrTxDone
	}
	rtp := unmapPort(req.RTP)
	rtcp := unmapPort(req.RTCP)
	// A peer not known yet (a trickle-ICE offer's placeholder without a usable candidate): the
	// unspecified address with port 0. The pair stands for nobody until the media relay learns
	// the peer from its first packet; its family is the placeholder's.
	unknown := rtp.Addr().IsUnspecified() && rtp.Port() == 0
	if unknown {
		rtcp = rtp
	} else if !rtcp.IsValid() && rtp.IsValid() && rtp.Port() < 65535 {
		rtcp = netip.AddrPortFrom(rtp.Addr(), rtp.Port()+1)
	}
	if !req.From.Valid() || !rtp.Addr().IsValid() || (rtp.Port() == 0 && !unknown) || !rtcp.IsValid() {
		return Pair{}, fmt.Errorf("media pair for %s stream %d/%d at %v: %w", req.From, req.Part, req.Index, req.RTP, ErrInvalid)
	}
	key := streamKey{part: int32(req.Part), index: int32(req.Index)}
	i := legIndex(req.From)

	// A second request for the same stream and side in this message: keep or replace the first.
	for j, p := range tx.legs {
		if p.key == key && p.from == req.From && p.fork == req.Fork {
			if p.rtp.to == rtp && p.rtcp.to == rtcp {
				tx.legs[j].mux, tx.legs[j].held = req.Mux, req.Held
				return pairOf(p.rtp), nil
			}
			tx.discard(p)
			tx.legs = append(tx.legs[:j], tx.legs[j+1:]...)
			break
		}
	}

	m := tx.m
	m.mu.Lock()
	if err := tx.joinLocked(); err != nil {
		m.mu.Unlock()
		return Pair{}, err
	}
	if st := tx.call.stream(key); st != nil {
		l := st.legs[i]
		if st.isFork(i, req.Fork) {
			l = leg{}
			if j := st.forkOf(req.Fork); j >= 0 {
				l = st.forks[j]
			} else if len(st.forks) >= MaxForks {
				// Each dialog's answer takes a pair: one call must not drain the range.
				m.mu.Unlock()
				return Pair{}, fmt.Errorf("media pair for %s stream %d/%d: %w", req.From, req.Part, req.Index,
					&limitError{what: "forked answers of one stream", limit: MaxForks + 1})
			}
		}
		if l.rtp != nil && l.rtp.to == rtp && l.rtcp.to == rtcp {
			m.mu.Unlock()
			tx.legs = append(tx.legs, pendingLeg{key: key, from: req.From, rtp: l.rtp, rtcp: l.rtcp, reused: true, mux: req.Mux, held: req.Held, fork: req.Fork})
			return pairOf(l.rtp), nil
		}
		if sp := st.spare.rtp; sp != nil && l.rtp == nil && !st.isFork(i, req.Fork) && sp.faces == req.From.Other() &&
			sp.addr.Addr() == m.addrs(sp.faces).pick(like(req.Toward, rtp.Addr())) {
			// The first answer: it takes over the pair its offer reserved.
			spRTCP := st.spare.rtcp
			m.mu.Unlock()
			p := pendingLeg{key: key, from: req.From, mux: req.Mux, held: req.Held, fork: strings.Clone(req.Fork), adopted: sp}
			p.rtp = tx.binding(TypeRTP, sp.faces, sp.addr, rtp, sp.slot, sp.res)
			p.rtcp = tx.binding(TypeRTCP, sp.faces, spRTCP.addr, rtcp, sp.slot, spRTCP.res)
			tx.legs = append(tx.legs, p)
			return pairOf(p.rtp), nil
		}
	}
	isNew := tx.call.stream(key) == nil && !tx.pending(key)
	if lim := m.cfg.MaxStreamsPerCall; isNew && lim > 0 && len(tx.call.streams)+tx.newStreams() >= lim {
		// Each stream takes two pairs: one offer must not drain the range.
		m.mu.Unlock()
		m.metrics.limited.Inc()
		return Pair{}, fmt.Errorf("media pair for %s stream %d/%d: %w", req.From, req.Part, req.Index,
			&limitError{what: "media streams of one call", limit: lim, kind: ErrStreamLimit})
	}
	newStream := m.cfg.ReserveAnswerPair && isNew
	m.mu.Unlock()

	p := pendingLeg{key: key, from: req.From, mux: req.Mux, held: req.Held, fork: strings.Clone(req.Fork)}
	var err error
	if p.rtp, p.rtcp, err = tx.allocate(req.From.Other(), like(req.Toward, rtp.Addr()), rtp, rtcp); err != nil {
		return Pair{}, fmt.Errorf("media pair for %s stream %d/%d at %v: %w", req.From, req.Part, req.Index, rtp, err)
	}
	if newStream {
		if p.spare.rtp, p.spare.rtcp, err = tx.allocate(req.From, like(req.Back, rtp.Addr()), netip.AddrPortFrom(rtp.Addr(), 0), netip.AddrPort{}); err != nil {
			tx.discard(p)
			return Pair{}, fmt.Errorf("answer pair for %s stream %d/%d: %w", req.From, req.Part, req.Index, err)
		}
	}
	tx.legs = append(tx.legs, p)
	return pairOf(p.rtp), nil
}

// allocate reserves a pair on side faces, in the family of family, standing for rtp and rtcp.
// The pair counts against the call's source from here until its port goes back to the pool.
func (tx *Tx) allocate(faces Side, family netip.Addr, rtp, rtcp netip.AddrPort) (*Binding, *Binding, error) {
	m := tx.m
	if err := m.takePair(tx.call.source); err != nil {
		return nil, nil, err
	}
	local := m.addrs(faces).pick(family)
	slot, res, err := m.allocate(m.mediaPool, local, TypeRTP, "udp")
	if err != nil {
		m.givePair(tx.call.source)
		m.metrics.failed(TypeRTP, err)
		return nil, nil, err
	}
	port := m.mediaPool.port(slot)
	pr := res.(pairReservation)
	if rtp.Port() == 0 {
		rtp = netip.AddrPort{} // an answer pair: it stands for nobody until the answer
	}
	return tx.binding(TypeRTP, faces, netip.AddrPortFrom(local, port), rtp, slot, pr[0]),
		tx.binding(TypeRTCP, faces, netip.AddrPortFrom(local, port+1), rtcp, slot, pr[1]), nil
}

func (tx *Tx) binding(typ Type, faces Side, addr, to netip.AddrPort, slot int32, res io.Closer) *Binding {
	b := &Binding{m: tx.m, typ: typ, faces: faces, transport: "udp", addr: addr, to: to, callID: tx.call.id, slot: slot, res: res}
	if typ == TypeRTP {
		b.source = tx.call.source // the pair's slot, and its count, go back with its RTP binding
	}
	return b
}

// newStreams counts the streams the transaction starts (keys the call does not have yet).
func (tx *Tx) newStreams() int {
	n := 0
	for i, p := range tx.legs {
		if tx.call.stream(p.key) != nil {
			continue
		}
		first := true
		for _, q := range tx.legs[:i] {
			if q.key == p.key {
				first = false
				break
			}
		}
		if first {
			n++
		}
	}
	return n
}

// takePair counts one more pair against source, or fails with ErrPortLimit when its calls hold
// Config.MaxPortsPerSource already.
func (m *Map) takePair(source netip.Addr) error {
	lim := m.cfg.MaxPortsPerSource / 2
	if !source.IsValid() || m.cfg.MaxPortsPerSource <= 0 {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pairsOf[source] >= lim {
		m.metrics.limited.Inc()
		return &limitError{what: "relay ports of the calls of " + source.String(), limit: m.cfg.MaxPortsPerSource, kind: ErrPortLimit}
	}
	m.pairsOf[source]++
	return nil
}

// givePair returns the count of a pair whose port went back to the pool.
func (m *Map) givePair(source netip.Addr) {
	if !source.IsValid() || m.cfg.MaxPortsPerSource <= 0 {
		return
	}
	m.mu.Lock()
	decrement(m.pairsOf, source)
	m.mu.Unlock()
}

// pending reports whether the transaction already asked for a pair of stream key.
func (tx *Tx) pending(key streamKey) bool {
	for _, p := range tx.legs {
		if p.key == key {
			return true
		}
	}
	return false
}

// joinLocked finds or enters the transaction's call, once.
func (tx *Tx) joinLocked() error {
	m := tx.m
	if m.closed {
		return ErrClosed
	}
	if tx.call != nil {
		if tx.call.ended {
			return fmt.Errorf("call %q: %w", tx.callID, ErrCallEnded)
		}
		return nil
	}
	c := m.calls[tx.callID]
	if c == nil {
		var err error
		if c, err = m.addCallLocked(strings.Clone(tx.callID), tx.source); err != nil {
			m.metrics.limited.Inc()
			return fmt.Errorf("call %q: %w", tx.callID, err)
		}
	}
	c.txs++
	tx.call = c
	return nil
}

// Hold marks the stream's leg from side from as held without asking for a pair (an SDP with
// c=0.0.0.0 or a=inactive that the rewriter leaves alone): its pair is kept, and the stream no
// longer expires while the call lives. A stream the call does not have is ignored.
func (tx *Tx) Hold(from Side, part, index int) {
	if !tx.done {
		tx.holds = append(tx.holds, pendingHold{key: streamKey{int32(part), int32(index)}, from: from})
	}
}

// Drop releases both legs of the stream at Commit (m= port 0: the stream was rejected or
// removed), ReasonRenegotiated. Drop wins over a Media request for the same stream.
func (tx *Tx) Drop(part, index int) {
	if !tx.done {
		tx.drops = append(tx.drops, streamKey{int32(part), int32(index)})
	}
}

// Commit makes the transaction's pairs live and applies its holds and drops. It fails, rolling
// everything back, if the call ended or the Map closed meanwhile. Ports it releases are free when
// it returns.
func (tx *Tx) Commit() error {
	if tx.done {
		return ErrTxDone
	}
	m := tx.m
	now := m.Now()
	var out []released
	m.mu.Lock()
	if err := tx.checkLocked(); err != nil {
		m.mu.Unlock()
		tx.Rollback()
		return err
	}
	tx.done = true
	c := tx.call
	if c == nil {
		// No pair was asked for: holds and drops apply to the call if the Map has it.
		if c = m.calls[tx.callID]; c == nil {
			m.mu.Unlock()
			return nil
		}
		c.txs++
	}
	for _, p := range tx.legs {
		st := c.stream(p.key)
		if st == nil {
			st = &stream{call: c, key: p.key}
			st.sched = sched{idx: -1, st: st}
			c.streams = append(c.streams, st)
		}
		i := legIndex(p.from)
		l := leg{rtp: p.rtp, rtcp: p.rtcp, held: p.held, fork: p.fork}
		if p.spare.rtp != nil {
			if st.spare.rtp == nil && st.legs[1-i].rtp == nil {
				p.spare.rtp.st, p.spare.rtcp.st = st, st
				m.publishLocked(p.spare.rtp, now)
				m.publishLocked(p.spare.rtcp, now)
				st.spare = p.spare
			} else {
				tx.discardSpare(p)
			}
		}
		if p.adopted != nil {
			// The answer pair's ports and reservations pass to the answer's bindings, silently:
			// for the media relay it is the same pair.
			m.retireLocked(st.spare.rtp)
			m.retireLocked(st.spare.rtcp)
			st.spare = leg{}
		} else if sp := st.spare.rtp; sp != nil && !p.reused && sp.faces == p.from.Other() && st.legs[i].rtp == nil && !st.isFork(i, p.fork) {
			// The first answer got a pair of its own (another address family): the reserved one
			// is not needed.
			out = m.releaseSpareLocked(st, ReasonRenegotiated, out)
		}
		if st.isFork(i, p.fork) {
			// Another early dialog answered the same offer: its pair joins the stream's forks.
			j := st.forkOf(p.fork)
			if !p.reused {
				if j >= 0 {
					out = m.releaseForkLocked(st, j, ReasonRenegotiated, out)
					j = -1
				}
				p.rtp.st, p.rtcp.st = st, st
				m.publishLocked(p.rtp, now)
				m.publishLocked(p.rtcp, now)
				linkLocked(st, i, l, false)
			}
			if j >= 0 {
				st.forks[j] = l
			} else {
				st.forks = append(st.forks, l)
			}
		} else {
			if !p.reused {
				out = m.releaseLegLocked(st, i, ReasonRenegotiated, out)
				p.rtp.st, p.rtcp.st = st, st
				m.publishLocked(p.rtp, now)
				m.publishLocked(p.rtcp, now)
			}
			st.legs[i] = l
			if !p.reused {
				linkLocked(st, i, l, true)
				for _, f := range st.forks {
					// The offer changed: every fork's answer faces the new pair.
					linkLocked(st, 1-i, f, false)
				}
			}
		}
		p.rtp.mux.Store(p.mux)
		p.rtcp.mux.Store(p.mux)
		st.touched = now
		m.scheduleLocked(&st.sched)
	}
	for _, h := range tx.holds {
		if st := c.stream(h.key); st != nil && h.from.Valid() && st.legs[legIndex(h.from)].rtp != nil {
			st.legs[legIndex(h.from)].held = true
			st.touched = now
			m.scheduleLocked(&st.sched)
		}
	}
	for _, key := range tx.drops {
		if st := c.stream(key); st != nil {
			out = m.releaseStreamLocked(st, ReasonRenegotiated, out)
		}
	}
	c.txs--
	m.changedCall(c.id)
	m.deleteIfIdleLocked(c)
	m.mu.Unlock()
	m.finish(out)
	return nil
}

// checkLocked verifies that what the transaction handed out can still take effect.
func (tx *Tx) checkLocked() error {
	if tx.m.closed {
		return ErrClosed
	}
	if tx.call == nil {
		return nil
	}
	if tx.call.ended {
		return fmt.Errorf("call %q: %w", tx.callID, ErrCallEnded)
	}
	for _, p := range tx.legs {
		if p.reused && !p.rtp.live.Load() {
			// The pair the message advertises expired or was replaced meanwhile.
			return fmt.Errorf("call %q: media pair %v released meanwhile: %w", tx.callID, p.rtp.addr, ErrCallEnded)
		}
		if p.adopted != nil && (!p.adopted.live.Load() || tx.call.stream(p.key) == nil || tx.call.stream(p.key).spare.rtp != p.adopted) {
			return fmt.Errorf("call %q: answer pair %v released meanwhile: %w", tx.callID, p.adopted.addr, ErrCallEnded)
		}
	}
	return nil
}

// Rollback gives back every pair the transaction allocated and forgets its holds and drops. It
// does nothing after Commit, so it can be deferred.
func (tx *Tx) Rollback() {
	if tx.done {
		return
	}
	tx.done = true
	m := tx.m
	if c := tx.call; c != nil {
		m.mu.Lock()
		c.txs--
		m.deleteIfIdleLocked(c)
		m.mu.Unlock()
	}
	for _, p := range tx.legs {
		tx.discard(p)
	}
	tx.legs = nil
}

// discard gives back a pending leg's pairs that the transaction allocated.
func (tx *Tx) discard(p pendingLeg) {
	if !p.reused && p.adopted == nil {
		closeReservation(p.rtp.res)
		closeReservation(p.rtcp.res)
		tx.m.mediaPool.put(p.rtp.slot)
		tx.m.givePair(p.rtp.source)
	}
	tx.discardSpare(p)
}

func (tx *Tx) discardSpare(p pendingLeg) {
	if p.spare.rtp != nil {
		closeReservation(p.spare.rtp.res)
		closeReservation(p.spare.rtcp.res)
		tx.m.mediaPool.put(p.spare.rtp.slot)
		tx.m.givePair(p.spare.rtp.source)
	}
}

func pairOf(rtp *Binding) Pair {
	return Pair{RTP: rtp.addr, RTCPPort: rtp.addr.Port() + 1}
}

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	if !ap.IsValid() {
		return ap
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
