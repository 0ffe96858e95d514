package relay

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
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

// refuse answers a message sipcar will not forward: 400 for a malformed request, 505 for another
// SIP version, 415 for an SDP it cannot read, 488 for an offer of too many streams, 503 when a
// port, a call or a descriptor is short, or what a [refusal] says.
func (r *Relay) refuse(p *msgPass, err error) {
	var ref *refusal
	var perr *rewrite.Error
	switch {
	case errors.As(err, &ref):
	case errors.As(err, &perr) && errors.Is(err, rewrite.ErrTooMany):
		ref = &refusal{metric: "too-many-addresses", code: 403, reason: "Forbidden", warning: perr.Where + ": " + perr.Reason}
		if perr.Where == "Contact" {
			ref.metric = "too-many-contacts"
		}
	case errors.As(err, &perr):
		r.metrics.malformed.WithLabelValues(p.in.transport).Inc()
		ref = &refusal{metric: "malformed", code: 400, reason: "Bad Request", warning: perr.Where + ": " + perr.Reason}
		if errors.Is(err, rewrite.ErrVersion) {
			ref.code, ref.reason = 505, "Version Not Supported"
		} else if errors.Is(err, rewrite.ErrUnsupported) {
			ref.code, ref.reason = 415, "Unsupported Media Type"
		}
	case errors.Is(err, pinhole.ErrStreamLimit):
		ref = &refusal{metric: "too-many-streams", code: 488, reason: "Not Acceptable Here", warning: err.Error()}
	case errors.Is(err, pinhole.ErrPortLimit):
		ref = &refusal{metric: "port-limit", code: 503, reason: "Service Unavailable", warning: err.Error(), retryAfter: 5}
	case errors.Is(err, pinhole.ErrBindingLimit):
		ref = &refusal{metric: "binding-limit", code: 503, reason: "Service Unavailable", warning: err.Error(), retryAfter: 5}
	case errors.Is(err, pinhole.ErrNoDescriptors):
		r.log.Error("too many open files: raise the file descriptor limit (ulimit -n, LimitNOFILE, the container's nofile)", "err", err)
		ref = &refusal{metric: "no-descriptors", code: 503, reason: "Service Unavailable", warning: "too many open files", retryAfter: 5}
	case errors.Is(err, pinhole.ErrNoPorts), errors.Is(err, pinhole.ErrCallLimit):
		ref = &refusal{metric: "no-ports", code: 503, reason: "Service Unavailable", warning: err.Error(), retryAfter: 5}
	default:
		r.log.Warn("message not forwarded", "src", p.in.src, "err", err)
		ref = &refusal{metric: "error", code: 500, reason: "Server Internal Error", warning: "sipcar could not forward the request"}
	}
	r.metrics.dropped.WithLabelValues(ref.metric).Inc()
	r.diag.refused(p, ref, time.Now())
	if ref.metric != "error" && ref.metric != "no-descriptors" {
		r.logOnce(p.in.src, "message refused", "src", p.in.src, "reason", ref.metric, "err", err)
	}
	if ref.code != 0 {
		r.answerRequest(p, ref.code, ref.reason, warningText(ref.warning), ref.retryAfter)
	}
}

// answer sends sipcar's own response to the request of p back where it came from.
func (r *Relay) answer(p *msgPass, code int, reason, warning string, retryAfter int) {
	r.answerRequest(p, code, reason, warningText(warning), retryAfter)
}

// answerRequest answers the request of p (a Warning header's whole value given) and remembers
// the answer for the request's retransmissions.
func (r *Relay) answerRequest(p *msgPass, code int, reason, warning string, retryAfter int) {
	out := r.answerTo(p.in, p.raw, code, reason, warning, retryAfter, answerStranger)
	if out != nil && p.skey != (serverKey{}) {
		r.txs.refused(p.skey, out, p.in.local, time.Now())
	}
}

// warningText makes a Warning header value (RFC 3261 section 20.43, code 399: miscellaneous) of
// a text; empty stays empty.
func warningText(text string) string {
	if text == "" {
		return ""
	}
	return `399 sipcar "` + quoteWarning(text) + `"`
}

// warningTextOf is the text of a Warning header value that [warningText] made (or the value as
// it is).
func warningTextOf(value string) string {
	if t, ok := strings.CutPrefix(value, `399 sipcar "`); ok && strings.HasSuffix(t, `"`) {
		return t[:len(t)-1]
	}
	return value
}

// answerTo sends sipcar's own response to a request (responses and ACKs get none) with a Warning
// header's whole value, and returns the answer the request has (nil: none), sent or not: to a
// UDP source sipcar knows nothing of, answers are capped per source and in total and never
// larger than the request (see replyGate), but a request refused without an answer keeps its
// answer for its retransmissions all the same, which then get it within the cap and are never
// screened again. An answer that cannot be smaller than its request is an empty, non-nil slice.
func (r *Relay) answerTo(in inbound, req []byte, code int, reason, warning string, retryAfter int, to answerTo) []byte {
	known := to == answerKnownSource || in.conn != nil || r.isUpstream(in.src)
	now := time.Now()
	out, ends := r.rep.reply(req, in.src, code, reason, warning, retryAfter, replyFull)
	for trim := replyNoServer; out != nil && !known && len(out) > len(req); trim++ {
		if trim > replyBare {
			r.metrics.dropped.WithLabelValues("reply-size").Inc()
			return []byte{}
		}
		out, ends = r.rep.reply(req, in.src, code, reason, warning, retryAfter, trim)
	}
	if out == nil {
		return nil
	}
	if !known && !r.replies.allow(in.src.Addr(), now) {
		r.metrics.dropped.WithLabelValues("reply-limit").Inc()
		return out
	}
	if ends != nil {
		r.absorb.add(*ends, now)
	}
	r.metrics.answered.WithLabelValues(strconv.Itoa(code)).Inc()
	if in.conn != nil {
		if in.conn.enqueue(out, nil) == nil {
			r.captureAnswer(in.local, in.src, in.transport, out)
		}
		return out
	}
	if r.tp.sendUDP(in.local, in.src, out) == nil {
		r.captureAnswer(in.local, in.src, in.transport, out)
	}
	return out
}

// isUpstream reports whether src is the configured upstream's address (upstream mode).
func (r *Relay) isUpstream(src netip.AddrPort) bool {
	return r.cfg.Mode == Upstream && src.Addr().Unmap() == r.cfg.Upstream.Addr().Unmap()
}
