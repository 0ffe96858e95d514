package relay

import (
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// reply builds the response sipcar itself sends to a request it will not forward (400 for a
// malformed request, 403 for one no rule permits, 503 when no port or next hop is left), with a
// Warning (RFC 3261 section 20.43, code 399: miscellaneous) that says why, and Retry-After when
// given. warning is the Warning header's whole value. It returns nil when the request cannot be answered: it does not even parse as SIP, or
// it is an ACK (which is never answered).
//
// sipgo builds the response: it copies Via, From, To, Call-ID and CSeq as RFC 3261 section 8.2.6
// asks, which is what sipgo is for; the relay's own scanner is only for forwarding byte for byte.
func reply(req []byte, code int, reason, warning string, retryAfter int) []byte {
	out, _ := replyTo(req, code, reason, warning, retryAfter, replyFull)
	return out
}

// replyTo is reply, also returning the transaction the response ends when it is a final answer
// to an INVITE: its ACK (same Call-ID and branch, RFC 3261 section 17.1.1.3) is sipcar's to
// absorb, not to forward. trim leaves out what only explains, for an answer that must not be
// larger than its request.
func replyTo(req []byte, code int, reason, warning string, retryAfter int, trim replyTrim) ([]byte, *ackKey) {
	msg, err := parseSIP(req)
	if err != nil {
		return nil, nil
	}
	r, ok := msg.(*sip.Request)
	if !ok || r.Method == sip.ACK {
		return nil, nil
	}
	res := sip.NewResponseFromRequest(r, code, reason, nil)
	if to := res.To(); to != nil && !to.Params.Has("tag") {
		to.Params.Add("tag", "sipcar")
	}
	if warning != "" && trim < replyBare {
		res.AppendHeader(sip.NewHeader("Warning", warning))
	}
	if retryAfter > 0 {
		res.AppendHeader(sip.NewHeader("Retry-After", strconv.Itoa(retryAfter)))
	}
	if trim < replyNoServer {
		res.AppendHeader(sip.NewHeader("Server", "sipcar"))
	}
	var ends *ackKey
	if via := r.Via(); r.Method == sip.INVITE && code >= 300 && via != nil && r.CallID() != nil {
		branch, _ := via.Params.Get("branch")
		ends = &ackKey{callID: r.CallID().Value(), branch: branch}
	}
	return []byte(res.String()), ends
}

// replyTrim says what a reply leaves out to stay small.
type replyTrim uint8

const (
	replyFull     replyTrim = iota
	replyNoServer           // no Server header
	replyBare               // no Server, no Warning: what RFC 3261 section 8.2.6 requires, and Retry-After
)

// parseSIP is sipgo's parser, with a panic in it counted as a parse error: input here is hostile.
func parseSIP(b []byte) (msg sip.Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			msg, err = nil, errParserPanic
		}
	}()
	return sip.ParseMessage(b)
}

// quoteWarning makes text fit a Warning's quoted-string: no quotes, backslashes or line breaks.
func quoteWarning(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '"', '\\':
			return '\''
		case '\r', '\n':
			return ' '
		}
		return r
	}, s)
}
