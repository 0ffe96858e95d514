package relay

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	pionsdp "github.com/pion/sdp/v3"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/rewrite"
)

// The one-way-audio doctor names, for each leg of a call (the inside party and the outside
// party), the likeliest cause of missing or one-way audio, with the evidence sipcar holds: the
// signalling as it reached sipcar and the media relay's counters.

// Causes the doctor names, most decisive first: a leg's line names the first that applies, the
// others follow as further findings.
const (
	CausePortsExhausted   = "ports-exhausted"          // sipcar had no relay port for the call
	CauseRefused          = "refused"                  // sipcar refused the call for another reason
	CauseSRTPOneLeg       = "srtp-one-leg"             // one party's SDP is SRTP, the other's plain RTP
	CauseCodecMismatch    = "codec-mismatch"           // the answer's payload types are not the offer's
	CauseHold             = "hold"                     // sendonly/recvonly/inactive: silence is expected
	CauseALG              = "alg"                      // an ALG on the path rewrote some addresses, not all
	CauseWrongSDPAddress  = "wrong-sdp-address"        // the inside party's SDP names an address not its own
	CauseUnanchored       = "unanchored-address"       // a stream sipcar did not relay names a private address
	CauseNoMedia          = "no-media"                 // no RTP from the party (since some time)
	CauseMediaOtherSource = "media-from-other-address" // media comes from another address than signalled
	CauseOK               = "ok"
)

// causeRank orders causes as the constants above list them.
func causeRank(cause string) int {
	return slices.Index([]string{CausePortsExhausted, CauseRefused, CauseSRTPOneLeg, CauseCodecMismatch, CauseHold,
		CauseALG, CauseWrongSDPAddress, CauseUnanchored, CauseNoMedia, CauseMediaOtherSource, CauseOK}, cause)
}

// silenceGap is how long a party that sent RTP may pause before the doctor calls it silent
// (comfort noise and VAD keep far shorter gaps in a call that has audio).
const silenceGap = 5 * time.Second

// Diagnosis is the doctor's verdict on one call.
type Diagnosis struct {
	CallID   string         `json:"call_id"`
	State    string         `json:"state"`
	Started  time.Time      `json:"started"`
	Answered *time.Time     `json:"answered,omitempty"`
	Ended    *time.Time     `json:"ended,omitempty"`
	Legs     []LegDiagnosis `json:"legs"`
}

// LegDiagnosis is the verdict on one party of a call.
type LegDiagnosis struct {
	Side  string `json:"side"`  // inside or outside
	Party string `json:"party"` // its signalling address as sipcar saw it
	Cause string `json:"cause"`
	// Line names the cause and its evidence in one line.
	Line string `json:"line"`
	// Also are further findings, each a line of the same kind.
	Also []string `json:"also,omitempty"`
}

// WriteText writes the diagnosis one line per leg, as `sipcar doctor` prints it.
func (d Diagnosis) WriteText(w io.Writer) error {
	if _, err := fmt.Fprintf(w, "call %s: %s\n", d.CallID, d.State); err != nil {
		return err
	}
	for _, l := range d.Legs {
		party := l.Party
		if party == "" {
			party = "(not seen)"
		}
		if _, err := fmt.Fprintf(w, "  %-7s %s: %s\n", l.Side, party, l.Line); err != nil {
			return err
		}
		for _, a := range l.Also {
			if _, err := fmt.Fprintf(w, "  %-7s %s  also: %s\n", "", strings.Repeat(" ", len(party)), a); err != nil {
				return err
			}
		}
	}
	return nil
}

// Diagnose returns the doctor's verdict on every call with this Call-ID that is in progress or
// ended in the last hour (a call that crossed sipcar twice has two).
func (r *Relay) Diagnose(callID string) []Diagnosis {
	var out []Diagnosis
	for _, c := range r.diag.find(callID) {
		out = append(out, r.diagnose(c, time.Now()))
	}
	return out
}

// DiagnoseRecent returns the verdict on every call in progress or ended in the last hour, newest
// first.
func (r *Relay) DiagnoseRecent() []Diagnosis {
	recs := r.diag.recent()
	out := make([]Diagnosis, 0, len(recs))
	now := time.Now()
	for _, c := range recs {
		out = append(out, r.diagnose(c, now))
	}
	return out
}

func sortRecords(rs []callRecord) {
	slices.SortFunc(rs, func(a, b callRecord) int { return b.started.Compare(a.started) })
}

// partyView is what the doctor gathers of one party.
type partyView struct {
	side    pinhole.Side
	signal  netip.AddrPort // where its signalling came from
	notes   []messageNote  // its messages, oldest first
	lastSDP *messageNote
	sdp     *pionsdp.SessionDescription // lastSDP parsed; nil when it did not parse
}

func (r *Relay) diagnose(c callRecord, now time.Time) Diagnosis {
	d := Diagnosis{CallID: c.callID, Started: c.started}
	at := now
	switch {
	case !c.ended.IsZero():
		d.State, at = "ended ("+c.endReason+")", c.ended
		e := c.ended
		d.Ended = &e
	case c.answered.IsZero():
		d.State = "ringing"
	default:
		d.State = "in progress"
	}
	if !c.answered.IsZero() {
		a := c.answered
		d.Answered = &a
	}
	streams := c.streams
	if c.ended.IsZero() {
		streams = r.calls.liveStreams(c.key)
	}
	var parties [3]*partyView
	for _, side := range []pinhole.Side{pinhole.Inside, pinhole.Outside} {
		parties[side] = &partyView{side: side}
	}
	for i := range c.notes {
		n := &c.notes[i]
		p := parties[n.from]
		if !p.signal.IsValid() {
			p.signal = n.src
		}
		p.notes = append(p.notes, *n)
		if len(n.streams) > 0 {
			p.lastSDP = &p.notes[len(p.notes)-1]
		}
	}
	for _, ref := range c.refusals {
		// A call refused before anything was forwarded: its party is the one sipcar answered.
		if ref.from != pinhole.Inside && ref.from != pinhole.Outside {
			continue
		}
		if p := parties[ref.from]; !p.signal.IsValid() {
			p.signal = ref.src
		}
	}
	for _, p := range parties[1:] {
		if p.lastSDP != nil && p.lastSDP.sdp != nil && !p.lastSDP.sdpParts {
			var s pionsdp.SessionDescription
			if s.UnmarshalString(string(p.lastSDP.sdp)) == nil {
				p.sdp = &s
			}
		}
	}
	offer, answer := offerAnswer(c.notes)
	for _, side := range []pinhole.Side{pinhole.Inside, pinhole.Outside} {
		p, other := parties[side], parties[side.Other()]
		var fs []finding
		fs = append(fs, refusalFindings(c)...)
		fs = append(fs, securityFindings(side, offer, answer)...)
		fs = append(fs, codecFindings(offer, answer)...)
		fs = append(fs, holdFindings(p, other)...)
		fs = append(fs, algFindings(p)...)
		fs = append(fs, r.addressFindings(p)...)
		fs = append(fs, mediaFindings(c, p, streams, at)...)
		d.Legs = append(d.Legs, legVerdict(p, fs))
	}
	return d
}

// finding is one cause the doctor found on a leg, with its evidence.
type finding struct {
	cause, line string
}

func legVerdict(p *partyView, fs []finding) LegDiagnosis {
	l := LegDiagnosis{Side: p.side.String()}
	if p.signal.IsValid() {
		l.Party = p.signal.String()
	}
	slices.SortStableFunc(fs, func(a, b finding) int { return causeRank(a.cause) - causeRank(b.cause) })
	if len(fs) == 0 {
		fs = []finding{{CauseOK, "nothing amiss in what sipcar saw"}}
	}
	l.Cause, l.Line = fs[0].cause, fs[0].cause+": "+fs[0].line
	for _, f := range fs[1:] {
		if f.cause != CauseOK {
			l.Also = append(l.Also, f.cause+": "+f.line)
		}
	}
	return l
}

// offerAnswer returns the first SDP of the call and the first SDP from the other side after it.
func offerAnswer(notes []messageNote) (offer, answer *messageNote) {
	for i := range notes {
		n := &notes[i]
		if len(n.streams) == 0 {
			continue
		}
		if offer == nil {
			offer = n
		} else if n.from != offer.from {
			return offer, n
		}
	}
	return offer, nil
}

func refusalFindings(c callRecord) []finding {
	var fs []finding
	for _, ref := range c.refusals {
		line := fmt.Sprintf("sipcar answered the INVITE %d (%s) at %s", ref.code, ref.warning, clock(ref.at))
		switch ref.metric {
		case "no-ports", "port-limit", "no-descriptors":
			fs = append(fs, finding{CausePortsExhausted, line + ": no relay port pair was free for its media (SIPCAR_RTP_PORTS, SIPCAR_MAX_CALLS, SIPCAR_MAX_PORTS_PER_SOURCE)"})
		default:
			fs = append(fs, finding{CauseRefused, line + " (" + ref.metric + ")"})
		}
	}
	return fs
}

func holdFindings(p, other *partyView) []finding {
	var fs []finding
	for _, who := range []*partyView{p, other} {
		if who.lastSDP == nil {
			continue
		}
		for _, st := range who.lastSDP.streams {
			held := st.Disposition == rewrite.Held || st.Direction != rewrite.SendRecv
			if !held || st.Disposition == rewrite.Rejected {
				continue
			}
			dir := "a=" + st.Direction.String()
			if st.Disposition == rewrite.Held && st.Direction == rewrite.SendRecv {
				dir = "c=" + st.RTP.Addr().String()
			}
			whose := "this leg's"
			if who != p {
				whose = "the other leg's"
			}
			fs = append(fs, finding{CauseHold, fmt.Sprintf("%s SDP (%s at %s) says %s for stream %d: the call is on hold, silence one way or both is expected, not loss",
				whose, who.lastSDP.what, clock(who.lastSDP.at), dir, st.Index)})
			break
		}
	}
	return fs
}

// algFindings finds a message from outside whose Via an ALG rewrote to the packet's source while
// its Contact or SDP still names a private address: a NAT without an ALG leaves all of them, a
// phone that knows its public address writes all of them. (The inside party reaches sipcar
// without a NAT: its Via is its source.)
func algFindings(p *partyView) []finding {
	if p.side != pinhole.Outside {
		return nil
	}
	for _, n := range p.notes {
		if !n.via.IsValid() || n.via != n.src {
			continue
		}
		var left []string
		if n.contact.IsValid() && unroutable(n.contact.Addr()) && n.contact.Addr() != n.src.Addr() {
			left = append(left, "Contact "+n.contact.String())
		}
		for _, st := range n.streams {
			if a := st.RTP.Addr(); a.IsValid() && !a.IsUnspecified() && unroutable(a) && a != n.src.Addr() {
				left = append(left, "SDP c= "+a.String())
				break
			}
		}
		if len(left) > 0 {
			return []finding{{CauseALG, fmt.Sprintf("a SIP ALG between this party and sipcar rewrote the Via of its %s to %s (the packet's source) but left %s: turn the ALG off (SIP ALG, SIP transformations, helper sip)",
				n.what, n.via, strings.Join(left, ", "))}}
		}
	}
	return nil
}

// addressFindings finds SDP addresses that cannot work: the inside party naming an address that
// is neither on the inside nor its own (a PBX that does its own NAT handling behind sipcar), and
// a private address in a stream sipcar did not relay.
func (r *Relay) addressFindings(p *partyView) []finding {
	if p.lastSDP == nil {
		return nil
	}
	var fs []finding
	n := p.lastSDP
	for _, st := range n.streams {
		a := st.RTP.Addr()
		if !a.IsValid() || a.IsUnspecified() || st.Placeholder {
			continue
		}
		switch {
		case st.Disposition == rewrite.NotRelayed && unroutable(a):
			fs = append(fs, finding{CauseUnanchored, fmt.Sprintf("stream %d (%s %s) of its %s is not relayed by sipcar (a TCP transport, a host name or multicast) and names the private address %s, which the other party cannot reach",
				st.Index, st.Media, st.Proto, n.what, a)})
		case p.side == pinhole.Inside && st.Disposition == rewrite.Relayed && r.cfg.sideOf(a) != pinhole.Inside && a != n.src.Addr().Unmap():
			fs = append(fs, finding{CauseWrongSDPAddress, fmt.Sprintf("its %s names media address %s for stream %d, outside SIPCAR_INSIDE_NETS and not its signalling address %s: the PBX writes an external address of its own behind sipcar (unset its externip / external_media_address / NAT settings); sipcar sends there until the party's own packets teach it better",
				n.what, st.RTP, st.Index, n.src.Addr())})
		default:
			continue
		}
		break
	}
	return fs
}

// mediaFindings reads the party's media: none at all, none lately, or from another address than
// its SDP named.
func mediaFindings(c callRecord, p *partyView, streams []streamNote, at time.Time) []finding {
	var fs []finding
	for _, s := range streams {
		leg, spec := s.stats.A, s.spec.A // leg A's peer is the inside party
		if p.side == pinhole.Outside {
			leg, spec = s.stats.B, s.spec.B
		}
		if s.stats.Hold {
			continue
		}
		signalled := sdpAddrOf(p, spec)
		nat := ""
		if n := firstWithVia(p); n != nil && n.via.IsValid() && n.via != n.src {
			nat = fmt.Sprintf("; its signalling comes through a NAT (Via %s, packets from %s)", n.via, n.src)
		}
		switch {
		case leg.RTP.Packets == 0 && !c.answered.IsZero():
			fs = append(fs, finding{CauseNoMedia, fmt.Sprintf("no RTP from this party at relay port %s since the answer at %s (%s)%s%s",
				spec.RTP, clock(c.answered), at.Sub(c.answered).Round(time.Second), sentTo(signalled), nat)})
		case leg.RTP.Packets > 0 && at.Sub(leg.LastPacket) > silenceGap:
			fs = append(fs, finding{CauseNoMedia, fmt.Sprintf("no RTP from this party since %s (%s before %s), after %d packets%s",
				clock(leg.LastPacket), at.Sub(leg.LastPacket).Round(time.Second), verb(c), leg.RTP.Packets, nat)})
		case leg.Peer.IsValid() && signalled.IsValid() && !signalled.Addr().IsUnspecified() && leg.Peer != signalled:
			// The inside reaches sipcar without a NAT: there the party itself names an address it
			// does not send from.
			why := "a NAT or an ALG on its path rewrote it"
			if p.side == pinhole.Inside {
				why = "the party sends from another address than its SDP names"
			}
			fs = append(fs, finding{CauseMediaOtherSource, fmt.Sprintf("media comes from %s, not the %s its SDP named: %s (sipcar latched on the source, %d packets)",
				leg.Peer, signalled, why, leg.RTP.Packets)})
		case leg.RTP.Packets > 0:
			fs = append(fs, finding{CauseOK, fmt.Sprintf("%d RTP packets, lost %d, jitter %s", leg.RTP.Packets, max(leg.RTP.Lost, 0), leg.RTP.Jitter.Round(time.Microsecond))})
		}
		if leg.Bleed > 0 && leg.RTP.Packets == 0 {
			fs = append(fs, finding{CauseMediaOtherSource, fmt.Sprintf("%d packets reached its relay port %s from other sources than the party and were dropped", leg.Bleed, spec.RTP)})
		}
		break // the call's first stream speaks for it
	}
	return fs
}

// sdpAddrOf is the address the party's SDP named for the stream, as the media relay was told it.
func sdpAddrOf(p *partyView, spec mediarelay.LegSpec) netip.AddrPort {
	if p.lastSDP != nil {
		for _, st := range p.lastSDP.streams {
			if st.Disposition == rewrite.Relayed {
				return st.RTP
			}
		}
	}
	return spec.Peer
}

func sentTo(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return "; its SDP named " + a.String()
}

func verb(c callRecord) string {
	if c.ended.IsZero() {
		return "now"
	}
	return "the call's end"
}

func firstWithVia(p *partyView) *messageNote {
	for i := range p.notes {
		if p.notes[i].via.IsValid() {
			return &p.notes[i]
		}
	}
	return nil
}

// unroutable reports an address the public internet does not route to its owner: RFC 1918,
// unique local, shared (CGNAT, RFC 6598), benchmarking (RFC 2544: IANA lists 198.18.0.0/15 as
// not globally reachable, and networks do number hosts from it as from private space),
// link-local, loopback.
func unroutable(a netip.Addr) bool {
	a = a.Unmap()
	shared := netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, 0}), 10)
	benchmarking := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, 0}), 15)
	return a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() || shared.Contains(a) || benchmarking.Contains(a)
}

func clock(t time.Time) string { return t.UTC().Format("15:04:05.000Z") }

func statusText(code int) string { return strconv.Itoa(code) }
