package relay

import (
	"fmt"
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
	// skey names a request that came over UDP, for its retransmissions; retransmit says it is
	// one of a request forwarded before (not screened again).
	skey       serverKey
	retransmit bool
	key        string // the call state it belongs to (see passOf)
	t          *msgTranslator

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
	r.captureSIP(in.src, in.local, in.transport, p.callID, p.raw)
	p.initial = p.isReq && p.method == "INVITE" && len(m.ToTag()) == 0
	if p.isReq && p.method != "ACK" && in.conn == nil {
		p.skey = serverKeyOf(m, in.src)
		if answer, from, seen := r.txs.retransmission(p.skey); seen {
			if answer != nil {
				// Answered already: the answer again (within the cap on sipcar's own answers),
				// nothing else.
				r.metrics.dropped.WithLabelValues("retransmission").Inc()
				if len(answer) > 0 && (r.replies.allow(in.src.Addr(), now) || r.isUpstream(in.src)) {
					if r.tp.sendUDP(from, in.src, answer) == nil {
						r.captureSIP(from, in.src, "udp", p.callID, answer)
					}
				}
				return false
			}
			p.retransmit = true
		}
	}
	switch {
	case !p.isReq:
		return true
	case p.method == "ACK" && r.absorb.take(ackKey{p.callID, string(rewrite.ViaParam(m.TopVia(), "branch"))}, now):
		return false // the ACK of a final response sipcar sent itself
	case p.retransmit:
		return true // admitted when it first came
	case p.initial && r.draining.Load():
		r.answer(p, 503, "Service Unavailable", "sipcar is shutting down", 30)
		return false
	case m.MaxForwards() == 0 && p.method != "ACK":
		r.answer(p, 483, "Too Many Hops", "", 0)
		return false
	case rewrite.ViaNamesNoAddress(m.TopVia()):
		// Where its responses must go is no address: nothing sipcar forwards could be answered.
		r.metrics.malformed.WithLabelValues(in.transport).Inc()
		r.refuse(p, &refusal{metric: "malformed", code: 400, reason: "Bad Request",
			warning: "Via: the sent-by host is no IPv4 address"})
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
		p.next, p.out = b.ForwardTo(), r.transportTo(b.ForwardTo(), r.nat.originalTransport(b))
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

// screen applies the policy to requests (see [Relay.permitted]), but not again to a
// retransmission.
func (r *Relay) screen(p *msgPass) bool {
	return !p.isReq || p.retransmit || r.permitted(p)
}

// translate rewrites the message and commits what its rewriting allocated; when anything fails,
// everything the message allocated is rolled back and the sender is answered.
func (r *Relay) translate(p *msgPass) bool {
	p.key = r.calls.passOf(p.callID, p.from, p.in.src, p.next, &p.m)
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
		callID: p.key, next: p.next, out: out, fork: r.calls.forkOf(p.key, p.from, &p.m)}
	if !p.isReq {
		t.requestVias, t.requestSrc = p.tx.vias, p.tx.back
	}
	t.register = p.isReq && p.method == "REGISTER"
	t.registerAnswer = !p.isReq && p.method == "REGISTER"
	if p.isReq {
		if via, ok := topViaSentBy(&p.m); ok {
			t.senderVia = via
			if via != p.in.src {
				t.aliased = r.nat.setAlias(p.from, via, p.in.src)
			}
		}
	}
	p.t = t
	return rewrite.Rewrite(&p.res, &p.m, p.from, t)
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
	if t.tx == nil && r.calls.has(p.key) {
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
	r.follow(p)
	f := sendFailure{in: p.in, raw: p.raw, next: p.next, key: p.key, initial: p.initial,
		answerable: p.isReq && p.method != "ACK"}
	if f.answerable {
		tx := clientTx{key: requestKey(&p.m, p.t.viaOut), server: p.skey, back: p.in.src, backTransport: p.in.transport,
			vias: viaCopies(&p.m), next: p.next, nextTransport: p.out, call: p.key, initial: p.initial}
		if p.out == "udp" {
			// Over UDP the next hop may stay silent: the request is kept for sipcar's own 503.
			tx.in, tx.raw = p.in, p.raw
		}
		f.tx, f.fresh = r.txs.record(tx, time.Now())
	}
	var later func(error)
	if p.out != "udp" {
		later = r.failLater(f)
	}
	// The doctor's call log and the rewrite audit take the message before it leaves: once it is
	// sent, its response may come back and be handled before this goroutine would get to it. A
	// 200 noted before its INVITE's record exists is lost (the call would stay "ringing"), and an
	// answer audited before its INVITE made a traced source's call known (SIPCAR_TRACE=src:) is
	// not traced. A send that fails ends the call it started (sendFailed), which the log notes
	// too.
	r.diag.message(p, time.Now())
	r.audit(p)
	if err := r.tp.send(p.local, p.out, p.next, p.res.Out, later); err != nil {
		r.sendFailed(f, err)
		return
	}
	if !p.isReq && p.out == "udp" {
		r.txs.relayed(p.tx.key, p.res.Out, p.local) // for retransmissions of its request
	}
	r.metrics.forwarded.WithLabelValues(p.from.Other().String(), p.out).Inc()
	if p.sb != nil {
		// The signaling flow of the session table: this binding talks to next.
		p.sb.SetPeer(p.next)
		p.sb.Sent(len(p.res.Out), r.m.Now())
	}
	r.captureSIP(p.local, p.next, p.out, p.callID, p.res.Out)
}

// viaCopies copies the via-parms of a request, for its responses (see RestoreVia).
func viaCopies(m *rewrite.Message) [][]byte {
	vias := m.ViaParms(make([][]byte, 0, 4))
	n := 0
	for _, v := range vias {
		n += len(v)
	}
	buf := make([]byte, 0, n)
	for i, v := range vias {
		buf = append(buf, v...)
		vias[i] = buf[len(buf)-len(v) : len(buf) : len(buf)]
	}
	return vias
}

// sendFailure is what the relay needs to undo a message that could not be sent: the transaction
// it recorded, the call it would have started, and the request to answer.
type sendFailure struct {
	in         inbound
	raw        []byte
	next       netip.AddrPort
	key        string
	initial    bool
	answerable bool // a request that is not an ACK
	tx         *clientTx
	fresh      bool // tx was recorded by this message
}

// failLater returns the failure handler of a message queued on a connection, which may fail
// after the message's bytes are gone: it keeps a copy of the request.
func (r *Relay) failLater(f sendFailure) func(error) {
	f.raw = append([]byte(nil), f.raw...)
	return func(err error) { r.sendFailed(f, err) }
}

// sendFailed undoes a message that could not be sent: a transaction it opened is forgotten, a
// call it would have started loses its media at once, and the sender of a request gets 503.
func (r *Relay) sendFailed(f sendFailure, err error) {
	r.log.Debug("send failed", "to", f.next, "err", err)
	r.metrics.dropped.WithLabelValues("send").Inc()
	if f.fresh {
		r.txs.forget(f.tx)
		if f.initial {
			r.calls.end(f.key, pinhole.ReasonRejected)
		}
	}
	if f.answerable {
		r.answerTo(f.in, f.raw, 503, "Service Unavailable", warningText("next hop unreachable"), 0, answerKnownSource)
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
	code, reason, retry, metric := 403, "Forbidden", 0, "policy"
	if d.RateLimited {
		code, reason, retry, metric = 503, "Service Unavailable", d.RetryAfterSeconds(), "policy-rate"
	}
	// The doctor names the refusal of a call (silent rules stay out of its log: they are for
	// scanners, whose floods would crowd out the calls it keeps).
	r.diag.refused(p, &refusal{metric: metric, code: code, reason: reason, warning: warningTextOf(d.Warning)}, time.Now())
	r.answerRequest(p, code, reason, d.Warning, retry)
	return false
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
