package integration

import (
	"bytes"
	"net/netip"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
)

// wireMsg is a SIP message as it crossed an interface.
type wireMsg struct {
	src, dst netip.AddrPort
	proto    string
	raw      []byte
}

// status returns a response's status code, 0 for a request.
func (w wireMsg) status() int {
	code, ok := strings.CutPrefix(string(w.raw), "SIP/2.0 ")
	if !ok || len(code) < 3 {
		return 0
	}
	n, _ := strconv.Atoi(code[:3])
	return n
}

// cseqMethod returns the method of the message's CSeq.
func (w wireMsg) cseqMethod() string {
	for _, l := range strings.Split(string(w.raw), "\r\n") {
		name, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(strings.TrimSpace(name), "CSeq") {
			if f := strings.Fields(v); len(f) == 2 {
				return f[1]
			}
		}
		if l == "" {
			break
		}
	}
	return ""
}

// wireMessages returns the SIP messages of a capture in the order they crossed: each UDP
// datagram that starts with a SIP start line, and the messages of each TCP direction's byte
// stream (its segments joined in order, cut by Content-Length). Unlike [sipMessages] it does
// not assume that a TCP segment holds exactly one message.
func wireMessages(pkts []packet) []wireMsg {
	type flow struct{ src, dst netip.AddrPort }
	var out []wireMsg
	streams := make(map[flow][]byte)
	for _, p := range pkts {
		switch p.proto {
		case "udp":
			if sipStartLine.Match(p.payload) {
				out = append(out, wireMsg{src: p.src, dst: p.dst, proto: "udp", raw: p.payload})
			}
		case "tcp":
			if len(p.payload) == 0 {
				continue
			}
			f := flow{p.src, p.dst}
			buf := append(streams[f], p.payload...)
			for {
				buf = bytes.TrimLeft(buf, "\r\n") // keep-alives between messages
				n := sipMessageLength(buf)
				if n == 0 {
					break
				}
				out = append(out, wireMsg{src: p.src, dst: p.dst, proto: "tcp", raw: buf[:n:n]})
				buf = buf[n:]
			}
			streams[f] = buf
		}
	}
	return out
}

// sipMessageLength returns the length of the whole SIP message at the start of b (headers and
// Content-Length bytes of body), or 0 when b does not hold one yet.
func sipMessageLength(b []byte) int {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 || !sipStartLine.Match(b) {
		return 0
	}
	length := 0
	for _, l := range strings.Split(string(b[:end]), "\r\n")[1:] {
		name, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		if n := strings.ToLower(strings.TrimSpace(name)); n == "content-length" || n == "l" {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if end+4+length > len(b) {
		return 0
	}
	return end + 4 + length
}

// addressFields are the fields of a SIP message that give an address to be reached at (or to
// reach): what an ALG must translate. The others (From, To, Call-ID...) are identities.
var addressFields = []string{"Request-URI", "Via", "Contact", "Record-Route", "Route", "Path", "c=", "o=", "a=rtcp", "m="}

// isAddressField reports whether a field named by [leakedFields] gives an address.
func isAddressField(f string) bool { return slices.Contains(addressFields, f) }

// leakedFields returns the fields of a SIP message whose value contains text: "Request-URI" or
// "status line" for the start line, header names (canonical, compact forms expanded), "c=",
// "o=", "a=<attribute>" for SDP lines, "body" for other body lines. Each field is listed once,
// in the order it first appears.
func leakedFields(msg []byte, text string) []string {
	head, body, _ := strings.Cut(string(msg), "\r\n\r\n")
	lines := strings.Split(head, "\r\n")
	var out []string
	add := func(f string) {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	if strings.Contains(lines[0], text) {
		if strings.HasPrefix(lines[0], "SIP/2.0 ") {
			add("status line")
		} else {
			add("Request-URI")
		}
	}
	for _, l := range lines[1:] {
		name, v, ok := strings.Cut(l, ":")
		if ok && strings.Contains(v, text) {
			add(canonicalHeader(name))
		}
	}
	for _, l := range strings.Split(body, "\n") {
		l = strings.TrimRight(l, "\r")
		if !strings.Contains(l, text) {
			continue
		}
		switch {
		case len(l) > 2 && l[0] == 'a' && l[1] == '=':
			attr, _, _ := strings.Cut(l[2:], ":")
			add("a=" + attr)
		case len(l) > 2 && l[1] == '=':
			add(l[:2])
		default:
			add("body")
		}
	}
	return out
}

// canonicalHeaders spells the header names the tests report.
var canonicalHeaders = map[string]string{
	"via": "Via", "contact": "Contact", "from": "From", "to": "To", "call-id": "Call-ID",
	"record-route": "Record-Route", "route": "Route", "path": "Path", "cseq": "CSeq",
}

func canonicalHeader(name string) string {
	n := strings.ToLower(strings.TrimSpace(name))
	if full, ok := compactNames[n]; ok {
		n = full
	}
	if c, ok := canonicalHeaders[n]; ok {
		return c
	}
	return textproto.CanonicalMIMEHeaderKey(n)
}

// rtpTo counts the RTP packets of a capture addressed to dst.
func rtpTo(pkts []packet, dst netip.AddrPort) int {
	n := 0
	for _, p := range pkts {
		if p.proto == "udp" && p.dst == dst && isRTP(p.payload) {
			n++
		}
	}
	return n
}
