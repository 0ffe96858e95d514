package relay

import (
	"net/netip"
	"sync"
	"time"
)

// sipcar's own answers (400 to garbage, 403 to a denied source, 503 when full) must not make it
// an amplifier or a flood of its own: over UDP a source address proves nothing, so a reply to
// one that sipcar knows nothing of is never larger than what arrived, and replies are capped per
// source and in total. A source sipcar knows (an established TCP or TLS connection, a transaction
// of its own in progress) gets its answer whole.

// replyGate caps sipcar's own replies over UDP.
type replyGate struct {
	perSource, total *throttle
}

// totalReplyFactor sizes the total cap: as many replies per second as that many sources at their
// own cap.
const totalReplyFactor = 50

func newReplyGate(perSecond int) *replyGate {
	if perSecond <= 0 {
		return &replyGate{}
	}
	return &replyGate{perSource: newThrottle(perSecond, 2*perSecond), total: newThrottle(perSecond*totalReplyFactor, perSecond*totalReplyFactor)}
}

// allow reports whether a reply to dst may go at now.
func (g *replyGate) allow(dst netip.Addr, now time.Time) bool {
	return g.perSource.allow(dst.Unmap(), now) && g.total.allow(netip.Addr{}, now)
}

// answerTo says how sipcar's own answer to a request may go.
type answerTo uint8

const (
	// answerStranger: a UDP source sipcar knows nothing of; the answer is capped and never larger
	// than the request.
	answerStranger answerTo = iota
	// answerKnownSource: a source that proved its address (a connection) or that sipcar relays for
	// (a transaction in progress): the answer goes whole.
	answerKnownSource
)

// ackKey names the ACK of a final error sipcar sent itself to an INVITE: its Call-ID and the
// INVITE's branch (RFC 3261 section 17.1.1.3).
type ackKey struct {
	callID, branch string
}

// ownAnswers remembers the INVITEs sipcar answered itself with a final error, for Timer B, so
// that their ACKs end here instead of reaching a next hop that never saw the INVITE. It holds two
// generations of at most maxOwnAnswers/2 each, so that a flood of refused INVITEs costs O(1) per
// answer and bounded memory.
type ownAnswers struct {
	mu        sync.Mutex // guards the following
	cur, prev map[ackKey]time.Time
	rotated   time.Time
}

const maxOwnAnswers = 200000

func newOwnAnswers() *ownAnswers {
	return &ownAnswers{cur: make(map[ackKey]time.Time), prev: make(map[ackKey]time.Time)}
}

func (o *ownAnswers) add(k ackKey, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.cur) >= maxOwnAnswers/2 {
		o.rotateLocked(now)
	}
	o.cur[k] = now
}

// take reports whether k is an ACK sipcar absorbs; retransmitted ACKs are absorbed too until
// Timer B after the answer.
func (o *ownAnswers) take(k ackKey, now time.Time) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	at, ok := o.cur[k]
	if !ok {
		at, ok = o.prev[k]
	}
	return ok && now.Sub(at) <= timerB
}

// prune forgets answers older than Timer B: every Timer B the older generation goes.
func (o *ownAnswers) prune(now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if now.Sub(o.rotated) >= timerB {
		o.rotateLocked(now)
	}
}

func (o *ownAnswers) rotateLocked(now time.Time) {
	o.prev, o.cur = o.cur, make(map[ackKey]time.Time)
	o.rotated = now
}
