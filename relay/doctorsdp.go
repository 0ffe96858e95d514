package relay

import (
	"fmt"
	"slices"
	"strings"

	pionsdp "github.com/pion/sdp/v3"

	"github.com/sipcar/sipcar/pinhole"
)

// What the doctor reads of the SDP of a call's offer and answer: each m= line's codecs and
// security, and the findings they give (SRTP on one leg only, a codec the other side did not
// offer).

// mline is what the doctor reads of one m= section.
type mline struct {
	proto   string
	formats []string
	rtpmap  map[string]string // format -> a=rtpmap's encoding, lower case
	crypto  bool
	port    int
}

// staticCodecs are the static RTP payload types of RFC 3551 an SDP may name without a=rtpmap.
var staticCodecs = map[string]string{"0": "pcmu/8000", "3": "gsm/8000", "4": "g723/8000", "8": "pcma/8000",
	"9": "g722/8000", "13": "cn/8000", "18": "g729/8000"}

// codec names format's codec: its a=rtpmap encoding (name/clock rate[/channels], case folded),
// a static payload type's, or the format itself.
func (m mline) codec(format string) string {
	if c, ok := m.rtpmap[format]; ok {
		return c
	}
	if c, ok := staticCodecs[format]; ok {
		return c
	}
	return format
}

func mlines(n *messageNote) []mline {
	if n == nil {
		return nil
	}
	var s pionsdp.SessionDescription
	if n.sdp == nil || n.sdpParts || s.UnmarshalString(string(n.sdp)) != nil {
		out := make([]mline, len(n.streams))
		for i, st := range n.streams {
			out[i] = mline{proto: st.Proto, port: int(st.RTP.Port())}
		}
		return out
	}
	out := make([]mline, len(s.MediaDescriptions))
	for i, md := range s.MediaDescriptions {
		_, crypto := md.Attribute("crypto")
		out[i] = mline{proto: strings.Join(md.MediaName.Protos, "/"), formats: md.MediaName.Formats, crypto: crypto,
			port: md.MediaName.Port.Value, rtpmap: map[string]string{}}
		for _, a := range md.Attributes {
			if pt, enc, ok := strings.Cut(strings.TrimSpace(a.Value), " "); ok && a.Key == "rtpmap" {
				out[i].rtpmap[pt] = strings.ToLower(strings.TrimSpace(enc))
			}
		}
	}
	return out
}

// secure says the m= line asks for SRTP: an SRTP profile, or SDES keys (a=crypto) on a plain
// one.
func (m mline) secure() bool { return m.srtpProfile() || m.crypto }

func (m mline) srtpProfile() bool { return strings.Contains(m.proto, "SAVP") }

// srtpMismatch says an offer's and an answer's m= line leave one party sending SRTP and the other
// plain RTP. An offer in an SRTP profile (RTP/SAVP, RTP/SAVPF) admits no plain answer; an answer
// with SRTP needs an offer of it. An offer of SDES keys in a plain profile (RTP/AVP with
// a=crypto, the "best effort" SRTP of RFC 4568 section 7.1.1 as Asterisk, FreeSWITCH and many
// phones send it) answered without keys is plain RTP on both sides: no mismatch.
func srtpMismatch(offer, answer mline) bool {
	return offer.srtpProfile() && !answer.secure() || answer.secure() && !offer.secure()
}

func (m mline) securityText() string {
	if m.crypto {
		return m.proto + " with a=crypto"
	}
	return m.proto
}

func securityFindings(side pinhole.Side, offer, answer *messageNote) []finding {
	if offer == nil || answer == nil {
		return nil
	}
	o, a := mlines(offer), mlines(answer)
	var fs []finding
	for i := range min(len(o), len(a)) {
		if o[i].port == 0 || a[i].port == 0 || !srtpMismatch(o[i], a[i]) {
			continue
		}
		mine, theirs := o[i], a[i]
		if answer.from == side {
			mine, theirs = a[i], o[i]
		}
		who := "this leg"
		if !mine.secure() {
			who = "the other leg"
		}
		fs = append(fs, finding{CauseSRTPOneLeg, fmt.Sprintf("SRTP on %s only (stream %d): this leg's SDP says %s, the other's %s; sipcar relays media as it is, so one party cannot decode the other's audio",
			who, i, mine.securityText(), theirs.securityText())})
	}
	return fs
}

func codecFindings(offer, answer *messageNote) []finding {
	if offer == nil || answer == nil {
		return nil
	}
	o, a := mlines(offer), mlines(answer)
	var fs []finding
	for i := range min(len(o), len(a)) {
		if o[i].port == 0 || a[i].port == 0 || len(o[i].formats) == 0 || len(a[i].formats) == 0 {
			continue
		}
		// A payload type the offer lacks is no mismatch when it names a codec the offer has: RFC
		// 3264 section 6.1 asks the answer to keep the offer's numbers (SHOULD), but each side
		// sends with the numbers the other's SDP gave, so a renumbered dynamic type still works.
		offered := map[string]bool{}
		for _, f := range o[i].formats {
			offered[o[i].codec(f)] = true
		}
		var foreign []string
		for _, f := range a[i].formats {
			if !slices.Contains(o[i].formats, f) && !offered[a[i].codec(f)] {
				foreign = append(foreign, f)
			}
		}
		if len(foreign) > 0 {
			fs = append(fs, finding{CauseCodecMismatch, fmt.Sprintf("stream %d: the answer (%s from the %s) has payload types %s the offer (%s from the %s, %s) did not: the parties disagree on the codec",
				i, answer.what, answer.from, strings.Join(foreign, " "), offer.what, offer.from, strings.Join(o[i].formats, " "))})
		}
	}
	return fs
}
