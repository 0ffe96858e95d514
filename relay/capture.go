package relay

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"time"

	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/relay/hep"
	"github.com/sipcar/sipcar/rewrite"
)

// Capturer takes copies of what sipcar sends and receives, for a HEP collector (Homer). Send
// must not block: it is called on the message path.
type Capturer interface {
	Send(hep.Packet)
}

// captureSIP hands one SIP message as it crossed the wire to the capturer. Both versions of a
// relayed message, and sipcar's own answers, carry the Call-ID as correlation id, so a
// collector shows the message before and after rewriting side by side.
func (r *Relay) captureSIP(src, dst netip.AddrPort, transport, callID string, msg []byte) {
	if r.cfg.Capture == nil {
		return
	}
	src, dst = r.wireAddr(src, dst), r.wireAddr(dst, src)
	r.cfg.Capture.Send(hep.Packet{Src: src, Dst: dst, Transport: hepTransport(transport), Time: time.Now(),
		Proto: hep.ProtoSIP, Correlation: callID, Payload: msg})
}

// wireAddr is sipcar's address of a message as it crossed the wire to or from peer: a
// listener bound to the wildcard address names none, so the address sipcar advertises on the
// peer's side (the one the peer sent to, or sees the message from) stands for it.
func (r *Relay) wireAddr(local, peer netip.AddrPort) netip.AddrPort {
	if !local.Addr().IsUnspecified() {
		return local
	}
	addrs := r.cfg.Map.Public
	if r.cfg.sideOf(peer.Addr()) == pinhole.Inside {
		addrs = r.cfg.Map.Inside
	}
	a := addrs.IPv4
	if peer.Addr().Unmap().Is6() && addrs.IPv6.IsValid() || !a.IsValid() {
		a = addrs.IPv6
	}
	if !a.IsValid() {
		return local
	}
	return netip.AddrPortFrom(a, local.Port())
}

// captureAnswer captures sipcar's own response to a request; the Call-ID is read from it only
// when a capturer wants it.
func (r *Relay) captureAnswer(src, dst netip.AddrPort, transport string, msg []byte) {
	if r.cfg.Capture == nil {
		return
	}
	var m rewrite.Message
	callID := ""
	if rewrite.Parse(msg, &m) == nil {
		callID = string(m.CallID())
	}
	r.captureSIP(src, dst, transport, callID, msg)
}

func hepTransport(transport string) hep.Transport {
	if transport == "udp" {
		return hep.UDP
	}
	return hep.TCP // TCP and TLS: HEP names the IP protocol
}

// auditChange is one change the rewriting made, and why.
type auditChange struct {
	Field string `json:"field"`
	What  string `json:"what"`
	Old   string `json:"old"`
	New   string `json:"new"`
	Why   string `json:"why"`
}

// auditRecord is the rewrite audit of one relayed message.
type auditRecord struct {
	Call      string        `json:"call_id"`
	Side      string        `json:"from_side"`
	Src       string        `json:"src"`
	Dst       string        `json:"dst"`
	Transport string        `json:"transport"`
	Changes   []auditChange `json:"changes"`
	Before    string        `json:"before"`
	After     string        `json:"after"`
}

// audit logs a relayed message before and after rewriting, with every change and why: every
// message at debug level, the messages of traced calls (SIPCAR_TRACE) at info level and to the
// HEP collector as a log record.
func (r *Relay) audit(p *msgPass) {
	traced := r.cfg.Trace.Match(p.callID, p.in.src.Addr(), time.Now())
	level := slog.LevelDebug
	if traced {
		level = slog.LevelInfo
	}
	if !r.log.Enabled(context.Background(), level) && !(traced && r.cfg.Capture != nil) {
		return
	}
	rec := auditRecord{Call: p.callID, Side: p.from.String(), Src: p.in.src.String(), Dst: p.next.String(),
		Transport: p.in.transport + "->" + p.out, Before: string(p.raw), After: string(p.res.Out)}
	for _, e := range p.res.Edits {
		rec.Changes = append(rec.Changes, auditChange{Field: e.Field.String(), What: e.What,
			Old: string(e.Old), New: string(e.New), Why: editReason(e, p.from)})
	}
	changes := make([]string, len(rec.Changes))
	for i, c := range rec.Changes {
		changes[i] = c.Field + " " + c.What + ": " + quoteEdit(c.Old) + " -> " + quoteEdit(c.New) + " (" + c.Why + ")"
	}
	r.log.Log(context.Background(), level, "rewrite audit", "method", p.method, "status", p.m.StatusCode(),
		"call", rec.Call, "from", rec.Side, "src", rec.Src,
		"to", rec.Dst, "transport", rec.Transport, "changes", changes, "before", rec.Before, "after", rec.After)
	if traced && r.cfg.Capture != nil {
		if b, err := json.Marshal(rec); err == nil {
			r.cfg.Capture.Send(hep.Packet{Src: p.in.src, Dst: p.next, Transport: hepTransport(p.out), Time: time.Now(),
				Proto: hep.ProtoLog, Correlation: p.callID, Payload: b})
		}
	}
}

func quoteEdit(s string) string {
	if s == "" {
		return "(none)"
	}
	return `"` + s + `"`
}

// editReason says why the rewriting made an edit, by what it changed and which way the message
// went.
func editReason(e rewrite.Edit, from pinhole.Side) string {
	toward := "sipcar's binding on the outside for the inside party, so that the world answers through sipcar"
	if from == pinhole.Outside {
		toward = "the inside party that sipcar's binding stands for, or sipcar's binding on the inside for the outside party"
	}
	switch e.Field {
	case rewrite.FieldVia:
		return "responses come back through sipcar: " + toward
	case rewrite.FieldViaReceived:
		return "the address the previous hop saw, translated like the sent-by (RFC 3581)"
	case rewrite.FieldViaMaddr:
		return "a multicast or alternate response address, translated like the sent-by"
	case rewrite.FieldRequestURI:
		return "the request's target: " + toward
	case rewrite.FieldContact:
		return "in-dialog requests and registrations reach the party through sipcar: " + toward
	case rewrite.FieldRecordRoute, rewrite.FieldRoute, rewrite.FieldPath:
		return "the route set passes through sipcar: " + toward
	case rewrite.FieldSDPOrigin:
		return "no address of the other side shows in the SDP's origin"
	case rewrite.FieldSDPConnection:
		return "media anchored at sipcar's relay address on the receiver's side"
	}
	switch e.What {
	case "SDP m= port", "SDP a=rtcp port", "SDP a=rtcp added":
		return "media anchored at sipcar's relay port pair (RTP and RTCP)"
	case "ICE attribute removed":
		return "ICE candidates would route media around sipcar"
	case "Content-Length", "part Content-Length", "Content-Length added":
		return "the body's length changed with the rewriting"
	}
	return "keeps the message consistent with the rewritten addresses"
}
