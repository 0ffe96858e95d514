package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// sipcar answers some requests itself (400 for a malformed one, 403 when the policy or a cap
// says no, 503 when full or when the next hop is gone). RFC 3261 section 8.2.6 says what such a
// response holds: the request's Via headers, From, To (with a tag added when it has none),
// Call-ID and CSeq, copied. They are copied from the request's own bytes, exactly as written:
// sipcar answers requests that are malformed elsewhere (that is often why it answers), and a
// parse and re-serialisation would lose what its parser cannot read (sipgo drops the host and
// branch of a Via with a space before ";branch"). sipgo builds the response around them.

// replier builds sipcar's own responses. Its key makes the To tags it adds: the same request
// (a retransmission) gets the same tag, as RFC 3261 section 16.7 asks of a stateless element,
// and nobody outside can predict them.
type replier struct {
	key [16]byte
}

func newReplier() *replier {
	r := &replier{}
	_, _ = rand.Read(r.key[:])
	return r
}

// requestHead is what an answer copies from a request, as written.
type requestHead struct {
	method                 string
	vias                   []string // each Via header's value, in order
	from, to, callID, cseq string
	topBranch              string
}

// replyTrim says what a reply leaves out to stay small.
type replyTrim uint8

const (
	replyFull     replyTrim = iota
	replyNoServer           // no Server header
	replyBare               // no Server, no Warning: what RFC 3261 section 8.2.6 requires, and Retry-After
)

// reply builds the response to req, a request that came from src: status code and reason, a
// Warning header's whole value and Retry-After when given. It returns nil when the request cannot
// be answered: it is an ACK (never answered), no request, or lacks a header the response must
// copy. For a final answer to an INVITE it also returns the ACK that will end it (same Call-ID
// and branch, RFC 3261 section 17.1.1.3), which is sipcar's to absorb.
func (rp *replier) reply(req []byte, src netip.AddrPort, code int, reason, warning string, retryAfter int, trim replyTrim) ([]byte, *ackKey) {
	h, ok := scanRequest(req)
	if !ok || h.method == "ACK" {
		return nil, nil
	}
	res := sip.NewResponse(code, reason)
	for i, v := range h.vias {
		if i == 0 {
			v = withReceived(v, src)
		}
		res.AppendHeader(sip.NewHeader("Via", v))
	}
	to := h.to
	if !hasTag(to) {
		to += ";tag=" + rp.tag(h)
	}
	res.AppendHeader(sip.NewHeader("From", h.from))
	res.AppendHeader(sip.NewHeader("To", to))
	res.AppendHeader(sip.NewHeader("Call-ID", h.callID))
	res.AppendHeader(sip.NewHeader("CSeq", h.cseq))
	if warning != "" && trim < replyBare {
		res.AppendHeader(sip.NewHeader("Warning", warning))
	}
	if retryAfter > 0 {
		res.AppendHeader(sip.NewHeader("Retry-After", strconv.Itoa(retryAfter)))
	}
	if trim < replyNoServer {
		res.AppendHeader(sip.NewHeader("Server", "sipcar"))
	}
	res.AppendHeader(sip.NewHeader("Content-Length", "0"))
	var ends *ackKey
	if h.method == "INVITE" && code >= 300 {
		ends = &ackKey{callID: h.callID, branch: h.topBranch}
	}
	return []byte(res.String()), ends
}

// tag makes the To tag of the response to h: a keyed hash of what identifies the request.
func (rp *replier) tag(h requestHead) string {
	sum := sha256.New()
	sum.Write(rp.key[:])
	for _, s := range []string{h.callID, h.from, h.topBranch, h.cseq} {
		sum.Write([]byte(s))
		sum.Write([]byte{0})
	}
	return "sc" + hex.EncodeToString(sum.Sum(nil)[:8])
}

// scanRequest reads the request line and the headers a response copies from raw, leniently: a
// header it does not need may be anything, one it copies only has to be there. Folded lines
// stay folded. It reports false for a response, a start line that is no request line, or a
// missing Via, From, To, Call-ID or CSeq.
func scanRequest(raw []byte) (requestHead, bool) {
	var h requestHead
	raw = bytes.TrimLeft(raw, "\r\n")
	line, rest, _ := bytes.Cut(raw, []byte("\n"))
	fields := strings.Fields(string(line))
	if len(fields) != 3 || strings.HasPrefix(fields[0], "SIP/") || !isTokenString(fields[0]) {
		return h, false
	}
	h.method = fields[0]
	for len(rest) > 0 {
		var l []byte
		l, rest, _ = bytes.Cut(rest, []byte("\n"))
		l = bytes.TrimRight(l, "\r")
		if len(l) == 0 {
			break // the end of the headers
		}
		// A folded header goes on in the lines that start with white space.
		for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
			var more []byte
			more, rest, _ = bytes.Cut(rest, []byte("\n"))
			l = append(append(l[:len(l):len(l)], "\r\n"...), bytes.TrimRight(more, "\r")...)
		}
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok {
			continue
		}
		v := strings.TrimSpace(string(value))
		switch strings.ToLower(strings.TrimSpace(string(name))) {
		case "via", "v":
			h.vias = append(h.vias, v)
		case "from", "f":
			h.from = first(h.from, v)
		case "to", "t":
			h.to = first(h.to, v)
		case "call-id", "i":
			h.callID = first(h.callID, v)
		case "cseq":
			h.cseq = first(h.cseq, v)
		}
	}
	if len(h.vias) == 0 || h.from == "" || h.to == "" || h.callID == "" || h.cseq == "" {
		return h, false
	}
	h.topBranch = viaParamValue(topViaParm(h.vias[0]), "branch")
	return h, true
}

func first(had, v string) string {
	if had != "" {
		return had
	}
	return v
}

func isTokenString(s string) bool {
	for i := range len(s) {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return s != ""
}

// topViaParm returns the first via-parm of a Via value (up to a comma outside quotes).
func topViaParm(v string) string {
	quoted := false
	for i := range len(v) {
		switch v[i] {
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				return v[:i]
			}
		}
	}
	return v
}

// viaParamValue returns the value of parameter name in a via-parm, "" when absent or empty.
func viaParamValue(parm, name string) string {
	for _, p := range strings.Split(parm, ";")[1:] {
		k, val, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(val)
		}
	}
	return ""
}

// withReceived returns the top Via value as the server transport that received the request
// from src would see it (RFC 3261 section 18.2.1, RFC 3581): received= when the sent-by host is
// not src's address, rport= filled in when the sender asked for it. What the value held is kept
// as written; received goes at the end of its first via-parm.
func withReceived(v string, src netip.AddrPort) string {
	if !src.IsValid() {
		return v
	}
	parm := topViaParm(v)
	rest := v[len(parm):] // the via-parms after the first, comma included
	body := strings.TrimRight(parm, " \t")
	trail := parm[len(body):]
	params := strings.Split(body, ";")
	for i := 1; i < len(params); i++ {
		k, val, hasVal := strings.Cut(params[i], "=")
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "received":
			return v // a server before sipcar said it: not ours to change
		case "rport":
			if !hasVal || strings.TrimSpace(val) == "" {
				params[i] = strings.TrimRight(k, " \t") + "=" + strconv.Itoa(int(src.Port()))
			}
		}
	}
	body = strings.Join(params, ";")
	if a, err := netip.ParseAddr(strings.Trim(sentByHost(params[0]), "[]")); err != nil || a.Unmap() != src.Addr().Unmap() {
		body += ";received=" + src.Addr().Unmap().String()
	}
	return body + trail + rest
}

// sentByHost returns the host of a via-parm's sent-protocol and sent-by ("SIP/2.0/UDP
// host:port", white space allowed around the slashes and the colon), brackets kept for IPv6.
func sentByHost(head string) string {
	i, slashes := 0, 0
	for ; i < len(head) && slashes < 2; i++ {
		if head[i] == '/' {
			slashes++
		}
	}
	rest := strings.TrimLeft(head[i:], " \t") // the transport, then white space, then sent-by
	j := strings.IndexAny(rest, " \t")
	if j < 0 {
		return ""
	}
	hp := strings.Join(strings.Fields(rest[j:]), "")
	if strings.HasPrefix(hp, "[") {
		if k := strings.IndexByte(hp, ']'); k > 0 {
			return hp[:k+1]
		}
		return hp
	}
	host, _, _ := strings.Cut(hp, ":")
	return host
}

// hasTag reports whether a To (or From) value has a tag parameter: among the header's
// parameters, after the URI's closing ">" or, without brackets, after the addr-spec (which then
// holds no ";" of its own, RFC 3261 section 20).
func hasTag(v string) bool {
	params := v
	if i := strings.LastIndexByte(v, '>'); i >= 0 {
		params = v[i+1:]
	} else if i := strings.IndexByte(v, ';'); i >= 0 {
		params = v[i:]
	} else {
		return false
	}
	for _, p := range strings.Split(params, ";") {
		k, _, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.TrimSpace(k), "tag") {
			return true
		}
	}
	return false
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
