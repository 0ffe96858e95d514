package relay

import (
	"container/heap"
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// Responses go only where sipcar's own transactions say. sipcar adds no Via of its own: it
// rewrites the sender's top Via to the sender's binding, so a response to a request it forwarded
// comes back with that binding's address and the sender's branch on top. Every request sipcar
// forwards is recorded under that top Via (as sipcar wrote it), its Call-ID and CSeq, with where
// the request came from and where it went; a response is forwarded only when it matches a record
// and comes from where the request went, and then only to where the request came from. An
// unsolicited response, whatever its Via names, reaches nobody (RFC 3261 section 17.1.3 matching,
// with the source check a NAT's filtering adds).

// txKey names a client transaction sipcar forwarded (RFC 3261 section 17.1.3): the top Via as
// sipcar sent it (sent-by and branch) and the CSeq. The Call-ID keeps transactions of RFC 2543
// peers, whose branches are not unique, apart.
type txKey struct {
	sentBy netip.AddrPort // zero when the sent-by is a host name
	branch string
	callID string
	cseq   uint32
	method string
}

// Retransmissions are not new requests. A request that came over UDP is also found by how it
// arrived (its source, top Via branch, Call-ID and CSeq): when it comes again, a retransmission,
// and sipcar has answered it (its own refusal, or the last response it relayed back), that
// answer is sent again and nothing else happens; when no answer has come yet, it is forwarded
// again without being screened or counted a second time.

// serverKey names a request as it arrived over UDP.
type serverKey struct {
	src    netip.AddrPort
	branch string
	callID string
	cseq   uint32
	method string
}

// serverKeyOf returns the key of a request that came from src.
func serverKeyOf(m *rewrite.Message, src netip.AddrPort) serverKey {
	cseq, method := m.CSeq()
	return serverKey{src: src, branch: string(rewrite.ViaParam(m.TopVia(), "branch")), callID: string(m.CallID()),
		cseq: cseq, method: string(method)}
}

// clientTx is a request sipcar forwarded (or answered itself), until its responses are over.
type clientTx struct {
	key txKey // zero for a request sipcar answered itself
	// server is the request as it arrived over UDP (zero over TCP and TLS, which do not
	// retransmit); last is the last answer sent back to it, from lastFrom, for retransmissions.
	server   serverKey
	last     []byte
	lastFrom netip.AddrPort
	// back is where the request came from, over backTransport: where its responses go. vias
	// are its via-parms as the sender wrote them, which its responses get back.
	back          netip.AddrPort
	backTransport string
	vias          [][]byte
	// next is where the request went, over nextTransport: where its responses must come from.
	next          netip.AddrPort
	nextTransport string
	// call is the call state the request belongs to, initial whether it is the INVITE that
	// starts it (its failure ends the call's media).
	call    string
	initial bool
	// in and raw are the request as received, for sipcar's own 503 when the next hop never
	// answers; set for requests forwarded over UDP (a stream transport reports its failures).
	in  inbound
	raw []byte

	answered bool // a response came: Timer B no longer runs
	final    bool // a final response came
	deadline time.Time
	idx      int // in the table's heap
}

// timerB is RFC 3261's 64*T1: how long a client transaction waits for a response before it
// gives up (Timer B for INVITE, Timer F for the rest).
const timerB = 32 * time.Second

// Transaction lifetimes. An INVITE that rings keeps its transaction as a proxy's Timer C (more
// than 3 minutes after its last provisional response, RFC 3261 section 16.6); a final response is
// followed by its retransmissions (a 2xx to an INVITE for 64*T1, RFC 6026 Timer L).
const (
	txRinging    = maxRinging
	txAfterFinal = timerB
)

// maxTransactions bounds the transactions remembered; past it the one nearest its end goes.
const maxTransactions = 200000

// transactions is the table of client transactions sipcar forwarded.
type transactions struct {
	timeout time.Duration // Timer B/F: how long a request waits for its first response

	mu       sync.Mutex // guards the following
	byKey    map[txKey]*clientTx
	byServer map[serverKey]*clientTx
	queue    txHeap // by deadline
}

func newTransactions(timeout time.Duration) *transactions {
	return &transactions{timeout: timeout, byKey: make(map[txKey]*clientTx), byServer: make(map[serverKey]*clientTx)}
}

// requestKey is the key of the transaction m starts when sipcar sends it with the top Via
// sent-by sentBy.
func requestKey(m *rewrite.Message, sentBy netip.AddrPort) txKey {
	cseq, method := m.CSeq()
	if string(method) == "ACK" {
		// The ACK of a non-2xx answer is part of the INVITE's transaction (same branch); a 2xx's
		// ACK is a transaction of its own that nobody answers.
		method = []byte("INVITE")
	}
	return txKey{sentBy: sentBy, branch: string(rewrite.ViaParam(m.TopVia(), "branch")), callID: string(m.CallID()),
		cseq: cseq, method: string(method)}
}

// responseKey is the key of the transaction a response answers: its top Via is the request's
// as sipcar sent it.
func responseKey(m *rewrite.Message) txKey {
	sentBy, _ := rewrite.ViaSentBy(m.TopVia())
	cseq, method := m.CSeq()
	return txKey{sentBy: sentBy, branch: string(rewrite.ViaParam(m.TopVia(), "branch")), callID: string(m.CallID()),
		cseq: cseq, method: string(method)}
}

// record remembers a request about to be sent (before, so that a response racing back on
// another socket's goroutine finds it). A retransmission updates where it goes but restarts no
// timer. It returns the transaction and whether it is new.
func (ts *transactions) record(tx clientTx, now time.Time) (*clientTx, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if old := ts.byKey[tx.key]; old != nil {
		old.back, old.backTransport, old.vias = tx.back, tx.backTransport, tx.vias
		old.next, old.nextTransport = tx.next, tx.nextTransport
		return old, false
	}
	t := &tx
	if t.raw != nil {
		t.raw = append([]byte(nil), t.raw...)
	}
	t.deadline = now.Add(ts.timeout)
	ts.addLocked(t)
	return t, true
}

// addLocked enters t in the table, making room when it is full.
func (ts *transactions) addLocked(t *clientTx) {
	if len(ts.queue) >= maxTransactions {
		ts.removeLocked(heap.Pop(&ts.queue).(*clientTx))
	}
	if t.key != (txKey{}) {
		ts.byKey[t.key] = t
	}
	if t.server != (serverKey{}) {
		ts.byServer[t.server] = t
	}
	heap.Push(&ts.queue, t)
}

// removeLocked takes t out of the indexes (not out of the heap).
func (ts *transactions) removeLocked(t *clientTx) {
	if ts.byKey[t.key] == t {
		delete(ts.byKey, t.key)
	}
	if ts.byServer[t.server] == t {
		delete(ts.byServer, t.server)
	}
}

// refused remembers sipcar's own answer to a request that came over UDP, for its
// retransmissions: they get the same answer, and are neither screened nor counted again. An empty
// answer (none can be sent) is remembered too: its retransmissions are absorbed.
func (ts *transactions) refused(k serverKey, answer []byte, from netip.AddrPort, now time.Time) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	last := append(make([]byte, 0, len(answer)), answer...) // never nil: the request was answered
	if old := ts.byServer[k]; old != nil {
		old.last, old.lastFrom = last, from
		return
	}
	ts.addLocked(&clientTx{server: k, last: last, lastFrom: from, answered: true,
		final: true, deadline: now.Add(txAfterFinal)})
}

// retransmission reports whether a request that came over UDP was seen before, and the answer
// it got when it got one (and the address that answer left from).
func (ts *transactions) retransmission(k serverKey) (answer []byte, from netip.AddrPort, seen bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.byServer[k]
	if t == nil {
		return nil, netip.AddrPort{}, false
	}
	return t.last, t.lastFrom, true
}

// relayed remembers the response to k that sipcar sent back, from from, for retransmissions of
// its request.
func (ts *transactions) relayed(k txKey, response []byte, from netip.AddrPort) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t := ts.byKey[k]; t != nil && t.server != (serverKey{}) {
		t.last, t.lastFrom = append(t.last[:0], response...), from
	}
}

// forget drops a transaction whose request could not be sent.
func (ts *transactions) forget(t *clientTx) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t.idx >= 0 && t.idx < len(ts.queue) && ts.queue[t.idx] == t {
		ts.removeLocked(t)
		heap.Remove(&ts.queue, t.idx)
	}
}

// txVerdict is what the table says of a response.
type txVerdict uint8

const (
	txMatched     txVerdict = iota
	txUnmatched             // no request sipcar forwarded has this top Via and CSeq
	txWrongSource           // the request's transaction, but not from where the request went
)

// response matches a response from src over transport that arrived at now with status code.
// On a match it returns where the response goes (the request's source, over the transport the
// request came in on) and the transaction's call state and whether it was the call's initial
// INVITE.
func (ts *transactions) response(k txKey, src netip.AddrPort, transport string, code int, now time.Time) (clientTx, txVerdict) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.byKey[k]
	if t == nil {
		return clientTx{}, txUnmatched
	}
	if !fromNextHop(t, src, transport) {
		return clientTx{}, txWrongSource
	}
	t.answered = true
	switch {
	case code >= 200:
		if !t.final {
			t.final = true
			t.deadline = now.Add(txAfterFinal)
		}
	case !t.final && k.method == "INVITE":
		t.deadline = now.Add(txRinging) // it rings: a proxy's Timer C
	}
	heap.Fix(&ts.queue, t.idx)
	return clientTx{key: t.key, back: t.back, backTransport: t.backTransport, vias: t.vias, call: t.call, initial: t.initial}, txMatched
}

// fromNextHop reports whether a response from src over transport comes from where t's request
// went. Over UDP the address and port must be the ones the request was sent to (RFC 3581: a
// server answers from where it received); over TCP or TLS the address (a server whose connection
// broke opens a new one, from another port, RFC 3261 section 18.2.2).
func fromNextHop(t *clientTx, src netip.AddrPort, transport string) bool {
	if transport == "udp" {
		return src == t.next
	}
	return src.Addr() == t.next.Addr()
}

// expired removes the transactions whose time ran out at now and returns those that never got a
// response.
func (ts *transactions) expired(now time.Time) []*clientTx {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var out []*clientTx
	for len(ts.queue) > 0 && !now.Before(ts.queue[0].deadline) {
		t := heap.Pop(&ts.queue).(*clientTx)
		ts.removeLocked(t)
		if !t.answered {
			out = append(out, t)
		}
	}
	return out
}

type txHeap []*clientTx

func (h txHeap) Len() int           { return len(h) }
func (h txHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h txHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *txHeap) Push(x any) {
	t := x.(*clientTx)
	t.idx = len(*h)
	*h = append(*h, t)
}
func (h *txHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.idx = -1
	return t
}

// runTransactions ends transactions at their deadlines every second until ctx is done: a request
// forwarded over UDP that got no response at all is answered 503 by sipcar (as a stateful proxy
// answers 408), and when it was the INVITE that starts a call, the call's media pairs go at once.
func (r *Relay) runTransactions(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.absorb.prune(now)
			r.diag.sweep(now)
			for _, tx := range r.txs.expired(now) {
				if tx.initial {
					r.calls.end(tx.call, pinhole.ReasonRejected)
				}
				if tx.raw == nil {
					continue
				}
				r.metrics.dropped.WithLabelValues("timeout").Inc()
				r.answerTo(tx.in, tx.raw, 503, "Service Unavailable", warningText("no response from the next hop"), 0, answerKnownSource)
			}
		}
	}
}
