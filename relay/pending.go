package relay

import (
	"context"
	"sync"
	"time"
)

// timerB is RFC 3261's 64*T1: how long a client transaction waits for a response before it
// gives up (Timer B for INVITE, Timer F for the rest).
const timerB = 32 * time.Second

// maxPending bounds the requests watched at once; past it, new ones are not watched (their
// senders' own timers still run).
const maxPending = 100000

// pendingRequests watches requests sipcar forwarded over UDP: when no response (for INVITE:
// any; for others: a final one) comes back within Timer B/F, the next hop is taken as
// unreachable and the sender gets 503 from sipcar, as a stateful proxy would send 408.
type pendingRequests struct {
	mu      sync.Mutex
	byKey   map[pendingKey]*pendingRequest
	timeout time.Duration
}

type pendingKey struct {
	callID, branch, method string
}

type pendingRequest struct {
	in       inbound
	raw      []byte
	deadline time.Time
}

func newPendingRequests(timeout time.Duration) *pendingRequests {
	return &pendingRequests{byKey: make(map[pendingKey]*pendingRequest), timeout: timeout}
}

// watch starts watching a forwarded request (a retransmission restarts nothing).
func (p *pendingRequests) watch(k pendingKey, in inbound, raw []byte, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.byKey[k]; ok || len(p.byKey) >= maxPending {
		return
	}
	p.byKey[k] = &pendingRequest{in: in, raw: append([]byte(nil), raw...), deadline: now.Add(p.timeout)}
}

// answered stops watching the request a response answers.
func (p *pendingRequests) answered(k pendingKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.byKey, k)
}

// expired removes and returns the requests whose time ran out at now.
func (p *pendingRequests) expired(now time.Time) []*pendingRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*pendingRequest
	for k, r := range p.byKey {
		if !now.Before(r.deadline) {
			out = append(out, r)
			delete(p.byKey, k)
		}
	}
	return out
}

// run answers expired requests with 503 every second until ctx is done.
func (r *Relay) runPending(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.absorb.prune(now)
			for _, p := range r.pending.expired(now) {
				r.metrics.dropped.WithLabelValues("timeout").Inc()
				r.answer(p.in, p.raw, 503, "Service Unavailable", "no response from the next hop", 0)
			}
		}
	}
}

// ownAnswers remembers the INVITEs sipcar answered itself with a final error, for Timer B, so
// that their ACKs end here instead of reaching a next hop that never saw the INVITE.
type ownAnswers struct {
	mu   sync.Mutex
	keys map[pendingKey]time.Time
}

func (o *ownAnswers) add(k pendingKey, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.keys) >= maxPending {
		for key, at := range o.keys {
			if now.Sub(at) > timerB {
				delete(o.keys, key)
			}
		}
		if len(o.keys) >= maxPending {
			return
		}
	}
	o.keys[k] = now
}

// take reports whether k is an ACK sipcar absorbs; retransmitted ACKs are absorbed too until
// Timer B after the answer.
func (o *ownAnswers) take(k pendingKey) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	at, ok := o.keys[k]
	if ok && time.Since(at) > timerB {
		delete(o.keys, k)
		return false
	}
	return ok
}

// prune forgets answers older than Timer B.
func (o *ownAnswers) prune(now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, at := range o.keys {
		if now.Sub(at) > timerB {
			delete(o.keys, k)
		}
	}
}
