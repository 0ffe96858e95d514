package relay

import (
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// The call log keeps what the one-way-audio doctor needs of each call, in progress or ended in
// the last hour: the signalling of each party as it reached sipcar (source, Via, Contact, SDP
// before rewriting), sipcar's refusals, and each media stream's final counters. It is written on
// the message path only for the messages of INVITE dialogs, with a copy of their SDP, and reads
// the media relay's counters of calls in progress when asked.

const (
	// callLogKeep is how long an ended call stays diagnosable; DefaultCallHistory caps how many
	// do (Config.CallHistory), callLogLive the calls in progress (and INVITEs not yet answered)
	// the log follows, callLogBytes the SDP it keeps in all.
	callLogKeep        = time.Hour
	DefaultCallHistory = 10000
	callLogLive        = 100000
	callLogBytes       = 32 << 20
	// callNotes caps the messages kept per call: a long call's re-INVITEs keep the latest.
	callNotes = 12
	// maxNoteBody caps the SDP kept of one message.
	maxNoteBody = 8192
)

// callLog is the doctor's memory of calls.
type callLog struct {
	maxEnded int // ended calls kept; 0 keeps none, and no record is made at all

	mu    sync.Mutex
	calls map[string]*callRecord // by call key
	ended []string               // keys of ended calls, oldest first
	bytes int                    // SDP kept, in all
	swept time.Time
}

func newCallLog(maxEnded int) *callLog {
	return &callLog{maxEnded: maxEnded, calls: make(map[string]*callRecord)}
}

// callRecord is what the doctor knows of one call.
type callRecord struct {
	key, callID              string
	started, answered, ended time.Time
	endReason                string
	refusals                 []refusalNote
	notes                    []messageNote
	// streams are the final counters of the call's media streams, as each was removed.
	streams []streamNote
}

// messageNote is one message of a call as it reached sipcar.
type messageNote struct {
	at       time.Time
	from     pinhole.Side
	what     string // "INVITE", "200 INVITE", ...
	src      netip.AddrPort
	via      netip.AddrPort // the top Via's sent-by; invalid when a name
	contact  netip.AddrPort // the first Contact's address; invalid when none or a name
	sdp      []byte         // the SDP body before rewriting (a copy), when it had one
	streams  []rewrite.Stream
	sdpParts bool // the body was multipart
}

// refusalNote is an answer sipcar gave a request of the call instead of forwarding it.
type refusalNote struct {
	at      time.Time
	from    pinhole.Side
	src     netip.AddrPort // the request's sender
	code    int
	metric  string
	warning string
}

// streamNote is a media stream's spec and counters.
type streamNote struct {
	index int // the m= line's position in its SDP
	spec  mediarelay.StreamSpec
	stats mediarelay.StreamStats
}

// message notes a message of an INVITE dialog that sipcar forwarded: an initial INVITE starts
// a record; the others are kept only for calls the log follows.
func (l *callLog) message(p *msgPass, now time.Time) {
	_, cseqMethod := p.m.CSeq()
	switch string(cseqMethod) {
	case "INVITE", "ACK", "PRACK", "UPDATE", "BYE", "CANCEL":
	default:
		return
	}
	if l.maxEnded == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.calls[p.key]
	if c == nil || (!c.ended.IsZero() && p.initial) {
		if !p.initial || len(l.calls) >= callLogLive+l.maxEnded {
			return
		}
		if c != nil {
			l.bytes -= c.size() // an ended call of the same key, replaced
		}
		c = &callRecord{key: p.key, callID: p.callID, started: now}
		l.calls[p.key] = c
	}
	if !p.isReq && string(cseqMethod) == "INVITE" && p.m.StatusCode()/100 == 2 && c.answered.IsZero() {
		c.answered = now
	}
	if len(p.res.Streams) == 0 && !p.initial && (p.isReq || p.m.StatusCode() >= 300 || p.m.StatusCode() < 200) {
		return // nothing the doctor reads: no SDP, not the INVITE nor its answer
	}
	n := messageNote{at: now, from: p.from, what: p.method, src: p.in.src}
	if !p.isReq {
		n.what = statusText(p.m.StatusCode()) + " " + string(cseqMethod)
	}
	if p.isReq {
		// A response's top Via is its request's sender's, not the responder's.
		n.via, _ = rewrite.ViaSentBy(p.m.TopVia())
	}
	if v, ok := p.m.Header("Contact"); ok {
		n.contact, _ = rewrite.ContactAddr(v)
	}
	if len(p.res.Streams) > 0 {
		n.streams = append([]rewrite.Stream(nil), p.res.Streams...)
		if body := p.m.Body(); len(body) <= maxNoteBody && l.bytes+len(body) <= callLogBytes {
			n.sdp = append([]byte(nil), body...)
			l.bytes += len(n.sdp)
		}
		n.sdpParts = p.res.Streams[len(p.res.Streams)-1].Part > 0
	}
	if len(c.notes) == callNotes {
		// Keep the first two (the offer and its answer) and the latest.
		l.bytes -= len(c.notes[2].sdp)
		copy(c.notes[2:], c.notes[3:])
		c.notes = c.notes[:callNotes-1]
	}
	c.notes = append(c.notes, n)
}

// refused notes sipcar's own answer to a request of a call (an INVITE), making a record for an
// initial INVITE refused before anything was forwarded.
func (l *callLog) refused(p *msgPass, ref *refusal, now time.Time) {
	if !p.isReq || p.method != "INVITE" || p.key == "" && p.callID == "" || l.maxEnded == 0 {
		return
	}
	key := p.key
	if key == "" {
		key = p.callID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.calls[key]
	if c == nil {
		if !p.initial || len(l.calls) >= callLogLive+l.maxEnded {
			return
		}
		c = &callRecord{key: key, callID: p.callID, started: now}
		l.calls[key] = c
	}
	if len(c.refusals) < callNotes {
		c.refusals = append(c.refusals, refusalNote{at: now, from: p.from, src: p.in.src, code: ref.code, metric: ref.metric, warning: ref.warning})
	}
	if p.initial && c.answered.IsZero() && ref.code >= 300 && c.ended.IsZero() {
		l.endLocked(c, now, "refused by sipcar: "+statusText(ref.code)+" "+ref.metric)
	}
}

// streamEnded keeps a removed stream's last counters.
func (l *callLog) streamEnded(key string, s streamNote) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.calls[key]; c != nil && len(c.streams) < callNotes {
		c.streams = append(c.streams, s)
		sortStreams(c.streams)
	}
}

// sortStreams orders a call's streams by their m= line, the latest of a line first.
func sortStreams(s []streamNote) {
	slices.SortStableFunc(s, func(a, b streamNote) int { return a.index - b.index })
}

// callEnded marks a call ended, for reason.
func (l *callLog) callEnded(key string, reason pinhole.Reason, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.calls[key]; c != nil && c.ended.IsZero() {
		l.endLocked(c, now, reason.String())
	}
}

func (l *callLog) endLocked(c *callRecord, now time.Time, reason string) {
	c.ended, c.endReason = now, reason
	l.ended = append(l.ended, c.key)
	l.pruneLocked(now)
}

// pruneLocked forgets ended calls older than callLogKeep, beyond maxEnded or, oldest first,
// while the SDP kept is over callLogBytes.
func (l *callLog) pruneLocked(now time.Time) {
	drop := 0
	for ; drop < len(l.ended); drop++ {
		key := l.ended[drop]
		c := l.calls[key]
		if c == nil || c.ended.IsZero() {
			continue // replaced by a new call of the same key
		}
		if now.Sub(c.ended) < callLogKeep && len(l.ended)-drop <= l.maxEnded && l.bytes <= callLogBytes {
			break
		}
		l.bytes -= c.size()
		delete(l.calls, key)
	}
	l.ended = append(l.ended[:0], l.ended[drop:]...)
}

// sweep forgets what callLogKeep has passed for; the relay calls it from its housekeeping, and
// once a minute it looks at every call, forgetting those that never ended but saw nothing for
// callLogKeep (an INVITE that got no final answer through sipcar).
func (l *callLog) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pruneLocked(now)
	if now.Sub(l.swept) < time.Minute {
		return
	}
	l.swept = now
	for k, c := range l.calls {
		if c.ended.IsZero() && now.Sub(c.lastActivity()) > callLogKeep {
			l.bytes -= c.size()
			delete(l.calls, k)
		}
	}
}

// size is the SDP the record keeps.
func (c *callRecord) size() int {
	n := 0
	for _, m := range c.notes {
		n += len(m.sdp)
	}
	return n
}

func (c *callRecord) lastActivity() time.Time {
	t := c.started
	if n := len(c.notes); n > 0 && c.notes[n-1].at.After(t) {
		t = c.notes[n-1].at
	}
	return t
}

// find returns copies of the records of callID (a hairpinned call has two).
func (l *callLog) find(callID string) []callRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []callRecord
	for _, c := range l.calls {
		if c.callID == callID {
			out = append(out, c.copy())
		}
	}
	return out
}

// recent returns copies of every record, newest first.
func (l *callLog) recent() []callRecord {
	l.mu.Lock()
	out := make([]callRecord, 0, len(l.calls))
	for _, c := range l.calls {
		out = append(out, c.copy())
	}
	l.mu.Unlock()
	sortRecords(out)
	return out
}

func (c *callRecord) copy() callRecord {
	d := *c
	d.refusals = append([]refusalNote(nil), c.refusals...)
	d.notes = append([]messageNote(nil), c.notes...)
	d.streams = append([]streamNote(nil), c.streams...)
	return d
}
