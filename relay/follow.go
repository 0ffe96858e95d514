package relay

import (
	"strconv"
	"time"

	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// follow updates call state once a message is rewritten and its allocations committed:
// it gives the media relay the streams whose both sides are known and releases media when the
// call ends.
func (r *Relay) follow(p *msgPass) {
	m, t, from, in := &p.m, p.t, p.from, p.in
	callID := t.callID
	if r.cfg.Replica != nil {
		defer r.changedCallState(callID)
	}
	r.m.TouchCall(callID)
	if len(t.media) > 0 || r.calls.has(callID) {
		r.calls.update(callID, t, from, &p.res, p.initial, m.FromTag())
	}
	if m.IsRequest() {
		if string(m.Method()) == "CANCEL" {
			r.calls.with(callID, func(c *callState) { c.cancelled = true })
		}
		return
	}
	code := m.StatusCode()
	_, method := m.CSeq()
	if code < 200 {
		ringing := false
		r.calls.with(callID, func(c *callState) { ringing = !c.established })
		if string(method) == "INVITE" && ringing {
			// It rings: the call's pairs live as long as its INVITE may (a proxy's Timer C), and
			// the server map shows that lifetime.
			r.m.RingCall(callID, txRinging)
		}
		return
	}
	switch string(method) {
	case "INVITE":
		r.m.RingCall(callID, 0)
		if code < 300 {
			first, tag := false, ""
			r.calls.with(callID, func(c *callState) {
				first, tag = !c.established, c.dialogTag(m)
				c.established = true
			})
			if first && tag != "" {
				// The call is settled on this dialog: other forks' media goes (their pairs'
				// release removes their streams). A later 2xx of another fork keeps its own
				// until its BYE.
				r.m.SettleFork(callID, tag)
			}
			return
		}
		var established, cancelled bool
		r.calls.with(callID, func(c *callState) { established, cancelled = c.established, c.cancelled })
		if !established {
			reason := pinhole.ReasonRejected
			if cancelled || code == 487 {
				reason = pinhole.ReasonCancelled
			}
			r.calls.end(callID, reason)
		}
	case "BYE":
		tag := ""
		r.calls.with(callID, func(c *callState) { tag = c.dialogTag(m) })
		if tag != "" && r.m.EndFork(callID, tag) {
			return // one dialog of a forked call ended; the others keep their media
		}
		r.calls.end(callID, pinhole.ReasonCallEnded)
	case "REGISTER":
		if code < 300 {
			r.registered(m, from, in)
		}
	}
}

// registered extends the binding of a phone whose registration a 2xx confirmed until the
// registration expires: the binding the response reached stands for the phone.
func (r *Relay) registered(m *rewrite.Message, from pinhole.Side, in inbound) {
	if in.listener {
		return
	}
	b, ok := r.m.Resolve(from, in.local)
	if !ok {
		return
	}
	expires := -1
	if v, ok := m.Header("Expires"); ok {
		if n, err := strconv.Atoi(string(v)); err == nil {
			expires = n
		}
	}
	m.HeaderValues("Contact", func(v []byte) {
		if n, ok := rewrite.ContactExpires(v); ok && n > expires {
			expires = n
		}
	})
	if expires < 0 {
		expires = 3600
	}
	r.m.Registered(b, time.Duration(expires)*time.Second)
}

// released is the server map's release callback: a sip binding's NAT state goes with it, a media
// pair takes its media relay stream.
func (r *Relay) released(b *pinhole.Binding, reason pinhole.Reason) {
	if b.Type() == pinhole.TypeSIP {
		r.nat.forget(b)
		return
	}
	r.calls.released(b, reason)
}
