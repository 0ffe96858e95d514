package rewrite

import (
	"bytes"
	"strconv"
)

// span is a byte range [start, end) of a message.
type span struct{ start, end int }

func (s span) len() int { return s.end - s.start }

// hdrKind identifies the headers the rewriter or the relay's call state reads.
type hdrKind uint8

const (
	hOther hdrKind = iota
	hVia
	hContact
	hRecordRoute
	hRoute
	hPath
	hFrom
	hTo
	hCallID
	hCSeq
	hContentLength
	hContentType
	hContentEncoding
	hMaxForwards
	hExpires
	hDate
)

// header is one header field line (with its folded continuation lines).
type header struct {
	kind  hdrKind
	name  span // the field name as written ("Via", "v", "VIA")
	value span // the value without the LWS around it; may span folded lines
	line  span // the whole field, including its line ending(s)
}

// inlineHeaders is how many headers a Message holds without allocating; typical SIP messages
// have 10 to 25.
const inlineHeaders = 40

// Message is a SIP message scanned by [Parse]: where its start line, header fields and body stand
// in the bytes it was parsed from. It refers to those bytes and is valid while they are unchanged.
// A Message may be reused for another Parse; it is not safe for concurrent use while parsing.
type Message struct {
	parsed  bool   // Parse succeeded
	raw     []byte // exactly the message, from its start line to the end of its body
	skipped int    // CRLFs before the start line that Parse ignored

	request  bool
	method   span // request method
	ruri     span // Request-URI
	status   int  // response status code
	startEnd int  // end of the start line, after its line ending

	hdrs   []header
	inline [inlineHeaders]header

	blank     span // the empty line ending the headers
	body      span
	crlf      bool // line endings are CRLF (else bare LF)
	clHeader  int  // index in hdrs of Content-Length, -1 if absent
	ctHeader  int  // index in hdrs of Content-Type, -1 if absent
	ceHeader  int  // index in hdrs of Content-Encoding, -1 if absent
	callID    span
	cseqNum   uint32
	cseqMeth  span
	maxFwd    int // -1 if absent
	hasVia    bool
	hasFrom   bool
	hasTo     bool
	hasCallID bool
	hasCSeq   bool
	contacts  int // Contact values (name-addrs or "*")

	fromTag, toTag       span // the tag parameters' values
	hasFromTag, hasToTag bool
}

// maxAddressValues bounds the addresses of the headers the rewriter reads (Via, Contact,
// Record-Route, Route, Path) in one message: a request through seventy proxies names about a
// hundred and fifty; more makes a message cost ever more to check and rewrite, and is refused.
const maxAddressValues = 256

// Parse scans raw as one SIP message into m and checks what the rewriter and the relay rely on:
// the start line, header field syntax, one each of Call-ID, CSeq, From, To (and at most one
// Content-Length, Content-Type, Max-Forwards), at least one Via, the syntax of every header whose
// addresses are rewritten, that the tags of From and To can be read (their URIs are not judged:
// sipcar does not rewrite them), and a Content-Length no larger than the bytes given. CRLFs before the
// start line are skipped (RFC 3261 section 7.5). When Content-Length is absent the body is the
// rest of raw (a datagram); when raw holds more than Content-Length says, the rest is not part of
// the message. A problem is returned as an [*Error].
func Parse(raw []byte, m *Message) error {
	skip := 0
	for skip < len(raw) && (raw[skip] == '\r' || raw[skip] == '\n') {
		skip++
	}
	*m = Message{skipped: skip, clHeader: -1, ctHeader: -1, ceHeader: -1, maxFwd: -1}
	m.hdrs = m.inline[:0]
	raw = raw[skip:]
	m.raw = raw
	if len(raw) == 0 {
		return malformed("start line", 0, "empty message")
	}
	lineEnd := bytes.IndexByte(raw, '\n')
	if lineEnd < 0 {
		return malformed("start line", 0, "no line ending")
	}
	m.crlf = lineEnd > 0 && raw[lineEnd-1] == '\r'
	m.startEnd = lineEnd + 1
	if err := m.parseStartLine(trimEOL(raw[:lineEnd+1])); err != nil {
		return err
	}
	if err := m.parseHeaders(); err != nil {
		return err
	}
	if err := m.checkRequired(); err != nil {
		return err
	}
	if err := m.checkAddressHeaders(); err != nil {
		return err
	}
	m.parsed = true
	return nil
}

func trimEOL(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
	}
	return line
}

func (m *Message) parseStartLine(line []byte) error {
	if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
		return malformed("start line", 0, "starts with white space or is empty")
	}
	if hasPrefixFold(line, "SIP/") {
		return m.parseStatusLine(line)
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return malformed("start line", 0, "not a request line or a status line")
	}
	if !isToken(line[:sp1]) {
		return malformed("start line", 0, "method is not a token")
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 < 0 {
		return malformed("start line", sp1+1, "no SIP version after the Request-URI")
	}
	uri, version := rest[:sp2], rest[sp2+1:]
	if len(uri) == 0 {
		return malformed("start line", sp1+1, "empty Request-URI")
	}
	if err := checkVersion(version, sp1+1+sp2+1); err != nil {
		return err
	}
	if uri[0] == '<' {
		return malformed("Request-URI", sp1+1, "enclosed in angle brackets")
	}
	for i, c := range uri {
		if c <= ' ' || c >= 0x7f {
			return malformed("Request-URI", sp1+1+i, "contains white space or a control character")
		}
	}
	colon := bytes.IndexByte(uri, ':')
	if colon <= 0 || !isScheme(uri[:colon]) {
		return malformed("Request-URI", sp1+1, "no scheme")
	}
	m.request = true
	m.method = span{0, sp1}
	m.ruri = span{sp1 + 1, sp1 + 1 + sp2}
	return nil
}

func (m *Message) parseStatusLine(line []byte) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return malformed("start line", 0, "status line has no status code")
	}
	if err := checkVersion(line[:sp1], 0); err != nil {
		return err
	}
	rest := line[sp1+1:]
	if len(rest) < 3 || (len(rest) > 3 && rest[3] != ' ') {
		return malformed("start line", sp1+1, "status code is not three digits")
	}
	code := 0
	for _, c := range rest[:3] {
		if c < '0' || c > '9' {
			return malformed("start line", sp1+1, "status code is not three digits")
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 || code > 699 {
		return malformed("start line", sp1+1, "status code out of range 100-699")
	}
	m.status = code
	return nil
}

func checkVersion(v []byte, off int) error {
	// SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT
	i := len("SIP/")
	if !hasPrefixFold(v, "SIP/") {
		return malformed("start line", off, "no SIP version")
	}
	d1 := i
	for i < len(v) && isDigit(v[i]) {
		i++
	}
	if i == d1 || i >= len(v) || v[i] != '.' {
		return malformed("start line", off, "SIP version is not SIP/<digits>.<digits>")
	}
	i++
	d2 := i
	for i < len(v) && isDigit(v[i]) {
		i++
	}
	if i == d2 || i != len(v) {
		return malformed("start line", off, "SIP version is not SIP/<digits>.<digits> alone")
	}
	if string(v[len("SIP/"):]) != "2.0" {
		return &Error{Kind: ErrVersion, Where: "start line", Offset: off, Reason: "version " + strconv.Quote(string(v)) + " is not SIP/2.0"}
	}
	return nil
}

// parseHeaders splits the header fields, joining folded lines, up to the empty line, and finds
// the body.
func (m *Message) parseHeaders() error {
	raw := m.raw
	pos := m.startEnd
	for {
		if pos >= len(raw) {
			return malformed("headers", pos, "not terminated by an empty line")
		}
		nl := bytes.IndexByte(raw[pos:], '\n')
		if nl < 0 {
			return malformed("headers", pos, "not terminated by an empty line")
		}
		lineEnd := pos + nl + 1
		content := trimEOL(raw[pos:lineEnd])
		if len(content) == 0 {
			m.blank = span{pos, lineEnd}
			break
		}
		if content[0] == ' ' || content[0] == '\t' {
			if len(m.hdrs) == 0 {
				return malformed("headers", pos, "first header line starts with white space")
			}
			h := &m.hdrs[len(m.hdrs)-1]
			h.line.end = lineEnd
			if end := pos + len(trimRightLWS(content)); end > pos {
				if h.value.start == h.value.end {
					h.value.start = pos + len(content) - len(trimLeftLWS(content))
				}
				h.value.end = end
			}
			pos = lineEnd
			continue
		}
		colon := bytes.IndexByte(content, ':')
		if colon < 0 {
			return malformed("headers", pos, "header line without a colon")
		}
		name := trimRightLWS(content[:colon])
		if len(name) == 0 || !isToken(name) {
			return malformed("headers", pos, "header name is not a token")
		}
		value := content[colon+1:]
		vs := pos + colon + 1 + (len(value) - len(trimLeftLWS(value)))
		ve := pos + len(trimRightLWS(content))
		if ve < vs {
			ve = vs
		}
		m.hdrs = append(m.hdrs, header{
			kind:  kindOf(name),
			name:  span{pos, pos + len(name)},
			value: span{vs, ve},
			line:  span{pos, lineEnd},
		})
		pos = lineEnd
	}
	m.body = span{m.blank.end, len(raw)}
	for i := range m.hdrs {
		h := &m.hdrs[i]
		v := raw[h.value.start:h.value.end]
		var err error
		switch h.kind {
		case hContentLength:
			err = m.setOnce(&m.clHeader, i, "Content-Length")
		case hContentType:
			err = m.setOnce(&m.ctHeader, i, "Content-Type")
		case hContentEncoding:
			m.ceHeader = i
		case hCallID:
			if m.hasCallID {
				return malformed("Call-ID", h.line.start, "more than one Call-ID")
			}
			if len(v) == 0 || bytes.ContainsAny(v, " \t\r\n") {
				return malformed("Call-ID", h.value.start, "empty or contains white space")
			}
			m.hasCallID, m.callID = true, h.value
		case hCSeq:
			if m.hasCSeq {
				return malformed("CSeq", h.line.start, "more than one CSeq")
			}
			m.hasCSeq = true
			err = m.parseCSeq(h.value)
		case hMaxForwards:
			if m.maxFwd >= 0 {
				return malformed("Max-Forwards", h.line.start, "more than one Max-Forwards")
			}
			n, ok := parseUint(v, 255)
			if !ok {
				return malformed("Max-Forwards", h.value.start, "not a number from 0 to 255")
			}
			m.maxFwd = int(n)
		case hDate:
			// RFC 3261 allows only RFC 1123 dates in GMT; a proxy that forwards it should not
			// forward another time zone (RFC 4475 section 3.1.2.12).
			if !bytes.HasSuffix(v, []byte(" GMT")) {
				return malformed("Date", h.value.start, "not an RFC 1123 date in GMT")
			}
		case hExpires:
			if _, ok := parseUint(v, 1<<32-1); !ok {
				return malformed("Expires", h.value.start, "not a number of seconds below 2^32")
			}
		case hFrom:
			if m.hasFrom {
				return malformed("From", h.line.start, "more than one From")
			}
			m.hasFrom = true
		case hTo:
			if m.hasTo {
				return malformed("To", h.line.start, "more than one To")
			}
			m.hasTo = true
		case hVia:
			m.hasVia = true
		}
		if err != nil {
			return err
		}
	}
	if m.clHeader >= 0 {
		h := m.hdrs[m.clHeader]
		n, ok := parseUint(raw[h.value.start:h.value.end], 1<<31-1)
		if !ok {
			return malformed("Content-Length", h.value.start, "not a non-negative number")
		}
		if int(n) > m.body.len() {
			return malformed("Content-Length", h.value.start, "larger than the body received")
		}
		m.body.end = m.body.start + int(n)
		m.raw = raw[:m.body.end]
	}
	return nil
}

func (m *Message) setOnce(idx *int, i int, name string) error {
	if *idx >= 0 {
		return malformed(name, m.hdrs[i].line.start, "more than one "+name)
	}
	*idx = i
	return nil
}

func (m *Message) parseCSeq(v span) error {
	b := m.raw[v.start:v.end]
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	n, ok := parseUint(b[:i], 1<<31-1)
	if i == 0 || !ok {
		return malformed("CSeq", v.start, "sequence number is not a number below 2^31")
	}
	j := i
	for j < len(b) && isLWS(b[j]) {
		j++
	}
	if j == i || j == len(b) || !isToken(b[j:]) {
		return malformed("CSeq", v.start, "no method after the sequence number")
	}
	m.cseqNum = uint32(n)
	m.cseqMeth = span{v.start + j, v.end}
	return nil
}

func (m *Message) checkRequired() error {
	switch {
	case !m.hasVia:
		return malformed("Via", 0, "missing")
	case !m.hasFrom:
		return malformed("From", 0, "missing")
	case !m.hasTo:
		return malformed("To", 0, "missing")
	case !m.hasCallID:
		return malformed("Call-ID", 0, "missing")
	case !m.hasCSeq:
		return malformed("CSeq", 0, "missing")
	}
	if m.request && !bytes.Equal(m.raw[m.method.start:m.method.end], m.raw[m.cseqMeth.start:m.cseqMeth.end]) {
		return malformed("CSeq", m.cseqMeth.start, "method differs from the request method")
	}
	return nil
}

// checkAddressHeaders parses every header whose addresses the rewriter reads, so that a message
// that passes Parse can be rewritten without a syntax error, and finds the From and To tags.
func (m *Message) checkAddressHeaders() error {
	if m.request {
		u, err := parseURI(m.raw, m.ruri, "Request-URI")
		if err != nil {
			return err
		}
		if u.headers {
			return malformed("Request-URI", m.ruri.start, "headers are not allowed in a Request-URI")
		}
	}
	n := 0
	for _, h := range m.hdrs {
		count := func() error {
			if n++; n > maxAddressValues {
				return &Error{Kind: ErrTooMany, Where: headerName(h.kind), Offset: h.value.start,
					Reason: "more than " + strconv.Itoa(maxAddressValues) + " addresses in one message"}
			}
			return nil
		}
		var err error
		switch h.kind {
		case hVia:
			err = eachVia(m.raw, h.value, func(viaParm) error { return count() })
		case hContact:
			err = eachNameAddr(m.raw, h.value, h.kind, func(nameAddr) error { m.contacts++; return count() })
		case hRecordRoute, hRoute, hPath:
			err = eachNameAddr(m.raw, h.value, h.kind, func(nameAddr) error { return count() })
		case hFrom:
			m.fromTag, m.hasFromTag, err = tagOf(m.raw, h.value, "From")
		case hTo:
			m.toTag, m.hasToTag, err = tagOf(m.raw, h.value, "To")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// IsRequest reports whether the message is a request.
func (m *Message) IsRequest() bool { return m.request }

// Method returns a request's method, or the CSeq method of a response.
func (m *Message) Method() []byte {
	if m.request {
		return m.raw[m.method.start:m.method.end]
	}
	return m.raw[m.cseqMeth.start:m.cseqMeth.end]
}

// StatusCode returns a response's status code, 0 for a request.
func (m *Message) StatusCode() int { return m.status }

// RequestURI returns a request's Request-URI as written.
func (m *Message) RequestURI() []byte { return m.raw[m.ruri.start:m.ruri.end] }

// CallID returns the Call-ID.
func (m *Message) CallID() []byte { return m.raw[m.callID.start:m.callID.end] }

// CSeq returns the CSeq sequence number and method.
func (m *Message) CSeq() (uint32, []byte) {
	return m.cseqNum, m.raw[m.cseqMeth.start:m.cseqMeth.end]
}

// MaxForwards returns the Max-Forwards value, or -1 when the header is absent.
func (m *Message) MaxForwards() int { return m.maxFwd }

// Bytes returns the message: from its start line to the end of its body.
func (m *Message) Bytes() []byte { return m.raw }

// Skipped returns how many CRLF bytes before the start line Parse ignored.
func (m *Message) Skipped() int { return m.skipped }

// Body returns the message body.
func (m *Message) Body() []byte { return m.raw[m.body.start:m.body.end] }

// Header returns the value of the first header field named name (compact forms match their
// long names), and whether there is one.
func (m *Message) Header(name string) ([]byte, bool) {
	k := kindOf([]byte(name))
	for _, h := range m.hdrs {
		if (k != hOther && h.kind == k) || (k == hOther && equalFold(m.raw[h.name.start:h.name.end], name)) {
			return m.raw[h.value.start:h.value.end], true
		}
	}
	return nil, false
}

// HeaderValues calls fn with the value of every header field named name, in order.
func (m *Message) HeaderValues(name string, fn func(value []byte)) {
	k := kindOf([]byte(name))
	for _, h := range m.hdrs {
		if (k != hOther && h.kind == k) || (k == hOther && equalFold(m.raw[h.name.start:h.name.end], name)) {
			fn(m.raw[h.value.start:h.value.end])
		}
	}
}

// TopVia returns the value of the first Via (its first comma-separated value).
func (m *Message) TopVia() []byte {
	for _, h := range m.hdrs {
		if h.kind == hVia {
			v := m.raw[h.value.start:h.value.end]
			if i := indexUnquoted(v, ','); i >= 0 {
				v = trimRightLWS(v[:i])
			}
			return v
		}
	}
	return nil
}

// ViaParms appends to dst every via-parm of the message's Vias, in order, as written.
func (m *Message) ViaParms(dst [][]byte) [][]byte {
	for _, h := range m.hdrs {
		if h.kind == hVia {
			_ = eachVia(m.raw, h.value, func(p viaParm) error {
				dst = append(dst, m.raw[p.whole.start:p.whole.end])
				return nil
			})
		}
	}
	return dst
}

// FromTag and ToTag return the tag parameters of From and To (nil when absent, empty when the
// tag has no value). They are read whatever the URIs hold (see tagOf).
func (m *Message) FromTag() []byte { return m.tag(m.fromTag, m.hasFromTag) }

// ToTag returns the To tag, nil when absent.
func (m *Message) ToTag() []byte { return m.tag(m.toTag, m.hasToTag) }

func (m *Message) tag(s span, ok bool) []byte {
	if !ok || !m.parsed {
		return nil
	}
	return m.raw[s.start:s.end:s.end]
}

// kindOf maps a header name, long or compact, to its kind.
func kindOf(name []byte) hdrKind {
	if len(name) == 1 {
		switch name[0] | 0x20 {
		case 'v':
			return hVia
		case 'm':
			return hContact
		case 'f':
			return hFrom
		case 't':
			return hTo
		case 'i':
			return hCallID
		case 'l':
			return hContentLength
		case 'c':
			return hContentType
		case 'e':
			return hContentEncoding
		}
		return hOther
	}
	switch len(name) {
	case 3:
		if equalFold(name, "via") {
			return hVia
		}
	case 2:
		if equalFold(name, "to") {
			return hTo
		}
	case 4:
		if equalFold(name, "from") {
			return hFrom
		}
		if equalFold(name, "cseq") {
			return hCSeq
		}
		if equalFold(name, "path") {
			return hPath
		}
		if equalFold(name, "date") {
			return hDate
		}
	case 5:
		if equalFold(name, "route") {
			return hRoute
		}
	case 7:
		if equalFold(name, "contact") {
			return hContact
		}
		if equalFold(name, "call-id") {
			return hCallID
		}
		if equalFold(name, "expires") {
			return hExpires
		}
	case 12:
		if equalFold(name, "record-route") {
			return hRecordRoute
		}
		if equalFold(name, "content-type") {
			return hContentType
		}
		if equalFold(name, "max-forwards") {
			return hMaxForwards
		}
	case 14:
		if equalFold(name, "content-length") {
			return hContentLength
		}
	case 16:
		if equalFold(name, "content-encoding") {
			return hContentEncoding
		}
	}
	return hOther
}
