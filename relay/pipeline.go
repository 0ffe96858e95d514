package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"time"

	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/relay/policy"
	"github.com/sipcar/sipcar/rewrite"
)

// The message path: every message that arrives goes admit -> route -> screen -> translate ->
// deliver. admit drops floods and refuses what cannot be handled; route finds the next hop from
// state sipcar made (a binding, a transaction) or from the policy (the upstream, the original
// destination), never from what a response's headers say; screen applies the operator's rules;
// translate rewrites and commits the message's bindings, all or none; deliver updates call state,
// records the transaction and sends. A step that refuses answers the sender itself when the
// message is a request that can be answered.

// msgPass is one message on its way through the relay.
type msgPass struct {
	in   inbound
	raw  []byte
	from pinhole.Side
	m    rewrite.Message
	res  rewrite.Result

	isReq          bool
	method, callID string
	initial        bool // an INVITE out of any dialog: it starts a call

	next netip.AddrPort // where it goes; invalid until known
	out  string         // the transport it goes over
	tx   clientTx       // a response: the transaction it answers
	key  string         // the call state it belongs to (see passOf)
	t    *msgTranslator

	local netip.AddrPort   // where it leaves from
	sb    *pinhole.Binding // the sender's binding, when local is one
}

// refusal is a reason not to forward a message: the metric's reason, and the answer a request
// gets (none when code is 0).
type refusal struct {
	metric     string
	code       int
	reason     string
	warning    string
	retryAfter int
}

func (e *refusal) Error() string {
	if e.code == 0 {
		return e.metric
	}
	return strconv.Itoa(e.code) + " " + e.reason + ": " + e.warning
}

// handle takes one message through the pipeline.
func (r *Relay) handle(in inbound, raw []byte) {
	p := &msgPass{in: in, raw: raw, from: r.cfg.sideOf(in.src.Addr())}
	r.metrics.received.WithLabelValues(p.from.String(), in.transport).Inc()
	if !r.admit(p) || !r.route(p) || !r.screen(p) || !r.translate(p) {
		return
	}
	r.deliver(p)
}

// admit drops a source over its rate and refuses what sipcar cannot or will not handle at all:
// malformed messages, hop loops, new calls while draining, a REGISTER naming too many Contacts
// (checked before any rewriting, so that one message costs little however large).
func (r *Relay) admit(p *msgPass) bool {
	in, now := p.in, time.Now()
	if ok, why := r.flood.admit(in.src.Addr(), now); !ok {
		r.metrics.dropped.WithLabelValues(why).Inc()
		r.logOnce(in.src, "source throttled", "src", in.src, "reason", why)
		return false
	}
	if err := rewrite.Parse(p.raw, &p.m); err != nil {
		r.refuse(p, err)
		return false
	}
	m := &p.m
	p.callID, p.method, p.isReq = string(m.CallID()), string(m.Method()), m.IsRequest()
	p.initial = p.isReq && p.method == "INVITE" && len(m.ToTag()) == 0
	switch {
	case !p.isReq:
		return true
	case p.method == "ACK" && r.absorb.take(ackKey{p.callID, string(rewrite.ViaParam(m.TopVia(), "branch"))}, now):
		return false // the ACK of a final response sipcar sent itself
	case p.initial && r.isDraining():
		r.answer(p, 503, "Service Unavailable", "sipcar is shutting down", 30)
		return false
	case m.MaxForwards() == 0 && p.method != "ACK":
		r.answer(p, 483, "Too Many Hops", "", 0)
		return false
	case p.method == "REGISTER" && r.cfg.MaxContacts > 0 && !r.isUpstream(in.src):
		if n := rewrite.ContactCount(m); n > r.cfg.MaxContacts {
			r.refuse(p, &refusal{metric: "too-many-contacts", code: 403, reason: "Forbidden",
				warning: fmt.Sprintf("too many Contacts: %d, at most %d", n, r.cfg.MaxContacts)})
			return false
		}
	}
	return true
}

// route finds where a message goes, where that is known before rewriting: what reached a binding
// goes where the binding stands for, what comes from outside in upstream mode to the upstream,
// what the gateway intercepted to where it was going, a response to where its request came from.
func (r *Relay) route(p *msgPass) bool {
	in := p.in
	p.out = in.transport
	if !p.isReq && !(in.transparent && p.from == pinhole.Inside) {
		return r.routeResponse(p)
	}
	switch {
	case !in.listener:
		b, ok := r.m.Resolve(p.from, in.local)
		if !ok {
			r.metrics.dropped.WithLabelValues("stale-binding").Inc() // expired between receipt and here
			return false
		}
		p.next, p.out = b.ForwardTo(), r.transportTo(b.ForwardTo(), r.originalTransport(b))
		b.Received(len(p.raw), r.m.Now())
	case p.from == pinhole.Outside && r.cfg.Mode == Upstream:
		p.next, p.out = r.cfg.Upstream, r.cfg.UpstreamTransport
	case in.transparent:
		if p.from == pinhole.Outside || r.m.Own(pinhole.Outside, in.local.Addr()) || r.m.Own(pinhole.Inside, in.local.Addr()) {
			// Interception serves the inside's traffic to the world; anything else is not sipcar's.
			r.refuse(p, &refusal{metric: "not-intercepted", code: 403, reason: "Forbidden",
				warning: "sipcar relays only what the gateway intercepts from the inside"})
			return false
		}
		p.next = in.local
	}
	return true
}

// routeResponse sends a response back along its transaction: only a response to a request
// sipcar forwarded, from where that request went, and only to where it came from.
func (r *Relay) routeResponse(p *msgPass) bool {
	tx, verdict := r.txs.response(responseKey(&p.m), p.in.src, p.in.transport, p.m.StatusCode(), time.Now())
	switch verdict {
	case txUnmatched:
		r.metrics.dropped.WithLabelValues("unmatched-response").Inc()
		r.logOnce(p.in.src, "response to no request sipcar forwarded: dropped", "src", p.in.src, "call", p.callID)
		return false
	case txWrongSource:
		r.metrics.dropped.WithLabelValues("response-source").Inc()
		r.logOnce(p.in.src, "response from another source than its request's next hop: dropped", "src", p.in.src, "call", p.callID)
		return false
	}
	if !p.in.listener {
		if b, ok := r.m.Resolve(p.from, p.in.local); ok {
			b.Received(len(p.raw), r.m.Now())
		}
	}
	p.tx, p.next, p.out = tx, tx.back, tx.backTransport
	return true
}

// screen applies the policy to requests (see [Relay.permitted]).
func (r *Relay) screen(p *msgPass) bool {
	return !p.isReq || r.permitted(p)
}

// translate rewrites the message and commits what its rewriting allocated; when anything fails,
// everything the message allocated is rolled back and the sender is answered.
func (r *Relay) translate(p *msgPass) bool {
	p.key = r.passOf(p.callID, p.from, p.in.src, p.next, &p.m)
	err := r.rewriteFor(p, p.out)
	if err == nil && !p.next.IsValid() {
		err = r.routeByMessage(p)
	}
	if err == nil && !r.nextHopAllowed(p.next.Addr(), p.in.src.Addr()) {
		err = &refusal{metric: "forbidden-destination", code: 403, reason: "Forbidden", warning: "sipcar does not send to " + p.next.Addr().String()}
	}
	if err == nil && p.isReq && p.method != "ACK" && p.out == "udp" && r.cfg.UDPTCPFallback && len(p.res.Out) > udpSizeLimit {
		// RFC 3261 section 18.1.1: a request this large goes over a congestion-controlled
		// transport. Rewrite it again for TCP (its Via and the bindings it makes say so).
		p.t.rollback()
		p.out = "tcp"
		err = r.rewriteFor(p, p.out)
	}
	if err == nil {
		err = r.commit(p)
	}
	if err != nil {
		p.t.rollback()
		r.refuse(p, err)
		return false
	}
	return true
}

// rewriteFor rewrites the message for sending over out.
func (r *Relay) rewriteFor(p *msgPass, out string) error {
	t := &msgTranslator{r: r, transport: p.in.transport, src: p.in.src, source: r.callSource(p.in.src),
		callID: p.key, next: p.next, out: out, fork: r.forkOf(p.key, p.from, &p.m)}
	if p.isReq {
		if via, ok := topViaSentBy(&p.m); ok {
			t.senderVia = via
			if via != p.in.src {
				r.setAlias(p.from, via, p.in.src)
			}
		}
	}
	p.t = t
	return rewrite.Rewrite(&p.res, &p.m, rewrite.Side(p.from), t)
}

// routeByMessage finds the next hop of a request no binding, upstream or interception routes (a
// request from the inside to a listener, in upstream mode): its top Route when that is a loose
// router, else its Request-URI, as rewritten.
func (r *Relay) routeByMessage(p *msgPass) error {
	next, ok := requestTarget(p.res.Out)
	if !ok {
		return &refusal{metric: "no-route", code: 403, reason: "Forbidden", warning: "sipcar forwards only to its upstream and bindings"}
	}
	if r.cfg.Mode == Upstream && p.from == pinhole.Inside && r.cfg.sideOf(next.Addr()) == pinhole.Inside {
		// Not an open relay: from inside, a request must leave toward a binding's address.
		return &refusal{metric: "no-route", code: 403, reason: "Forbidden", warning: "no binding for " + next.String()}
	}
	p.next = next
	return nil
}

// commit applies the message's holds and drops, makes the sender's binding on the far side, and
// commits the media pairs the rewriting allocated.
func (r *Relay) commit(p *msgPass) error {
	t := p.t
	if t.tx == nil && r.hasCall(p.key) {
		t.tx = r.m.Begin(p.key, t.source)
	}
	if t.tx != nil {
		for _, s := range p.res.Streams {
			switch s.Disposition {
			case rewrite.Held:
				t.tx.Hold(p.from, s.Part, s.Index)
			case rewrite.Rejected:
				t.tx.Drop(s.Part, s.Index)
			}
		}
	}
	// Send from the sender's own binding on the far side, so that the receiver sees one address
	// per party and its replies come back through the same binding.
	var err error
	if p.local, p.sb, err = r.senderBinding(p); err != nil {
		return err
	}
	if t.tx != nil {
		return t.tx.Commit()
	}
	return nil
}

// deliver updates the call state, records the transaction a request starts and sends the
// message.
func (r *Relay) deliver(p *msgPass) {
	r.afterRewrite(p)
	var rec *clientTx
	fresh := false
	if p.isReq && p.method != "ACK" {
		tx := clientTx{key: requestKey(&p.m, p.t.viaOut), back: p.in.src, backTransport: p.in.transport,
			next: p.next, nextTransport: p.out, call: p.key, initial: p.initial}
		if p.out == "udp" {
			// Over UDP the next hop may stay silent: the request is kept for sipcar's own 503.
			tx.in, tx.raw = p.in, p.raw
		}
		rec, fresh = r.txs.record(tx, time.Now())
	}
	if err := r.send(p.local, p.out, p.next, p.res.Out); err != nil {
		r.log.Debug("send failed", "to", p.next, "err", err)
		r.metrics.dropped.WithLabelValues("send").Inc()
		if fresh {
			r.txs.forget(rec)
			if p.initial {
				r.endCall(p.key, pinhole.ReasonRejected) // the call cannot start: its ports go now
			}
		}
		if p.isReq && p.method != "ACK" {
			r.answerTo(p.in, p.raw, 503, "Service Unavailable", warningText("next hop unreachable"), 0, answerKnownSource)
		}
		return
	}
	r.metrics.forwarded.WithLabelValues(p.from.Other().String(), p.out).Inc()
	if p.sb != nil {
		// The signaling flow of the session table: this binding talks to next.
		p.sb.SetPeer(p.next)
		p.sb.Sent(len(p.res.Out), r.m.Now())
	}
	if r.log.Enabled(context.Background(), slog.LevelDebug) {
		r.log.Debug("relayed", "method", p.method, "status", p.m.StatusCode(), "call", p.callID, "src", p.in.src,
			"at", p.in.local, "from", p.local, "to", p.next, "transport", p.out)
	}
}

// permitted screens a request by the policy: requests out of a dialog, but not CANCEL (it follows
// an INVITE that was screened) nor the ACK of a response (those carry a To tag). A denied
// request is answered (403, or 503 when over its rate) or, for silent rules, dropped.
func (r *Relay) permitted(p *msgPass) bool {
	pol := r.cfg.Policy
	inDialog := len(p.m.ToTag()) > 0
	if pol == nil || inDialog || p.method == "CANCEL" {
		return true
	}
	req := policy.Request{
		Src:        p.in.src,
		DstAddr:    p.next.Addr(),
		DstSide:    policy.Outside,
		ToUpstream: r.cfg.Mode == Upstream && p.next == r.cfg.Upstream,
		Transport:  p.in.transport,
		Method:     p.method,
		Initial:    policy.Initial(p.method, inDialog),
	}
	if p.from == pinhole.Outside {
		req.DstSide = policy.Inside
	}
	if host := rewrite.URIHost(p.m.RequestURI()); host != "" {
		req.DstHost = host
	}
	d := pol.Evaluate(req)
	if d.Action == policy.Permit && !d.RateLimited {
		return true
	}
	r.metrics.dropped.WithLabelValues("policy").Inc()
	if d.Silent || p.method == "ACK" {
		return false
	}
	// A denied source is not welcome: 403 without Retry-After. One over its rate may come back:
	// 503 with Retry-After.
	code, reason, retry := 403, "Forbidden", 0
	if d.RateLimited {
		code, reason, retry = 503, "Service Unavailable", d.RetryAfterSeconds()
	}
	r.answerTo(p.in, p.raw, code, reason, d.Warning, retry, answerStranger)
	return false
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
	if ref.metric != "error" && ref.metric != "no-descriptors" {
		r.logOnce(p.in.src, "message refused", "src", p.in.src, "reason", ref.metric, "err", err)
	}
	if ref.code != 0 {
		r.answerTo(p.in, p.raw, ref.code, ref.reason, warningText(ref.warning), ref.retryAfter, answerStranger)
	}
}

// answer sends sipcar's own response to the request of p back where it came from.
func (r *Relay) answer(p *msgPass, code int, reason, warning string, retryAfter int) {
	r.answerTo(p.in, p.raw, code, reason, warningText(warning), retryAfter, answerStranger)
}

// warningText makes a Warning header value (RFC 3261 section 20.43, code 399: miscellaneous) of
// a text; empty stays empty.
func warningText(text string) string {
	if text == "" {
		return ""
	}
	return `399 sipcar "` + quoteWarning(text) + `"`
}

// answerTo sends sipcar's own response to a request (responses and ACKs get none) with a Warning
// header's whole value. To a UDP source sipcar knows nothing of, replies are capped per source
// and in total and never larger than the request (see replyGate).
func (r *Relay) answerTo(in inbound, req []byte, code int, reason, warning string, retryAfter int, to answerTo) {
	known := to == answerKnownSource || in.conn != nil || r.isUpstream(in.src)
	now := time.Now()
	if !known && !r.replies.allow(in.src.Addr(), now) {
		r.metrics.dropped.WithLabelValues("reply-limit").Inc()
		return
	}
	out, ends := replyTo(req, code, reason, warning, retryAfter, replyFull)
	for trim := replyNoServer; out != nil && !known && len(out) > len(req); trim++ {
		if trim > replyBare {
			r.metrics.dropped.WithLabelValues("reply-size").Inc()
			return
		}
		out, ends = replyTo(req, code, reason, warning, retryAfter, trim)
	}
	if out == nil {
		return
	}
	if ends != nil {
		r.absorb.add(*ends, now)
	}
	r.metrics.answered.WithLabelValues(strconv.Itoa(code)).Inc()
	if in.conn != nil {
		_ = in.conn.write(out)
		return
	}
	_ = r.send(in.local, "udp", in.src, out)
}

// isUpstream reports whether src is the configured upstream's address (upstream mode).
func (r *Relay) isUpstream(src netip.AddrPort) bool {
	return r.cfg.Mode == Upstream && src.Addr().Unmap() == r.cfg.Upstream.Addr().Unmap()
}

// requestTarget finds where a request without a binding to follow goes (RFC 3261 section 16.12):
// its top Route when that is a loose router, else its Request-URI.
func requestTarget(msg []byte) (netip.AddrPort, bool) {
	var m rewrite.Message
	if rewrite.Parse(msg, &m) != nil {
		return netip.AddrPort{}, false
	}
	if route, ok := m.Header("Route"); ok {
		if a, lr, ok := rewrite.RouteTarget(route); ok && lr {
			return a, true
		}
	}
	return rewrite.URIAddr(m.RequestURI())
}
