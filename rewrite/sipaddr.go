package rewrite

import (
	"bytes"
	"net/netip"
)

// hostPort is where a host and an optional port stand in a message, with the address when the
// host is an IP literal.
type hostPort struct {
	host    span // without the brackets of an IPv6 reference
	bracket bool // the host is an IPv6 reference in brackets
	port    span // digits only; empty when no port was written
	addr    netip.Addr
	portNum uint16
}

// isIP reports whether the host is an IP literal (as opposed to a host name).
func (h *hostPort) isIP() bool { return h.addr.IsValid() }

// uriInfo is what the rewriter needs of a URI.
type uriInfo struct {
	sip       bool // a sip: or sips: URI (others are left alone)
	secure    bool // sips:
	headers   bool // has a "?" headers component
	hp        hostPort
	transport span // value of the transport parameter, empty if absent
	scheme    span // "sip" or "sips"
	hpEnd     int  // just past the host and port: where URI parameters start
}

// parseURI reads the URI at s. Only sip: and sips: URIs are parsed past their scheme; others are
// accepted as they are.
func parseURI(raw []byte, s span, where string) (uriInfo, error) {
	var u uriInfo
	b := raw[s.start:s.end]
	colon := bytes.IndexByte(b, ':')
	if colon <= 0 || !isScheme(b[:colon]) {
		return u, malformed(where, s.start, "URI has no scheme")
	}
	scheme := b[:colon]
	u.scheme = span{s.start, s.start + colon}
	switch {
	case equalFold(scheme, "sip"):
	case equalFold(scheme, "sips"):
		u.secure = true
	default:
		return u, nil
	}
	u.sip = true
	for i, c := range b {
		if c <= ' ' || c >= 0x7f {
			return u, malformed(where, s.start+i, "URI contains white space or a control character")
		}
	}
	start := s.start + colon + 1
	if at := bytes.IndexByte(raw[start:s.end], '@'); at >= 0 {
		if at == 0 {
			return u, malformed(where, start, "URI has an empty user part")
		}
		start += at + 1
	}
	hp, end, err := parseHostPort(raw, start, s.end, where)
	if err != nil {
		return u, err
	}
	u.hp = hp
	u.hpEnd = end
	// URI parameters, then headers.
	i := end
	for i < s.end && raw[i] == ';' {
		nameStart := i + 1
		j := nameStart
		for j < s.end && raw[j] != ';' && raw[j] != '?' && raw[j] != '=' {
			j++
		}
		name := raw[nameStart:j]
		vs, ve := j, j
		if j < s.end && raw[j] == '=' {
			vs = j + 1
			ve = vs
			for ve < s.end && raw[ve] != ';' && raw[ve] != '?' {
				ve++
			}
		}
		if len(name) == 0 {
			return u, malformed(where, nameStart, "URI has an empty parameter")
		}
		if equalFold(name, "transport") {
			u.transport = span{vs, ve}
		}
		i = ve
	}
	if i < s.end && raw[i] != '?' {
		return u, malformed(where, i, "unexpected character after the host")
	}
	u.headers = i < s.end
	return u, nil
}

// parseHostPort reads host [":" port] at raw[i:end], stopping at the first character that cannot
// be part of it, and returns where it stopped. White space around the colon is allowed (Via
// sent-by uses SIP's COLON, which may have LWS around it).
func parseHostPort(raw []byte, i, end int, where string) (hostPort, int, error) {
	var hp hostPort
	if i < end && raw[i] == '[' {
		close := bytes.IndexByte(raw[i:end], ']')
		if close < 0 {
			return hp, i, malformed(where, i, "IPv6 reference without ']'")
		}
		a, ok := parseIP(raw[i+1 : i+close])
		if !ok {
			a, ok = parseIPv6ABNFBug(raw[i+1 : i+close])
		}
		if !ok || !a.Is6() {
			return hp, i, malformed(where, i, "invalid IPv6 reference")
		}
		hp.host, hp.bracket, hp.addr = span{i + 1, i + close}, true, a
		i += close + 1
	} else {
		j := i
		for j < end && (isAlpha(raw[j]) || isDigit(raw[j]) || raw[j] == '-' || raw[j] == '.' || raw[j] == '_') {
			j++
		}
		if j == i {
			return hp, i, malformed(where, i, "missing host")
		}
		hp.host = span{i, j}
		if looksNumeric(raw[i:j]) {
			a, ok := parseIP(raw[i:j])
			switch {
			case ok:
				hp.addr = a
			case !isIPv4ABNF(raw[i:j]):
				return hp, i, malformed(where, i, "invalid IPv4 address")
			}
			// Otherwise the host is an IPv4address by RFC 3261's ABNF (1*3DIGIT four times) that
			// names no real address: "00.000.00.0" from a capture whose addresses were masked,
			// "192.168.001.010", "999.1.1.1". Which address such a host means is not agreed
			// (decimal by the ABNF's intent, octal for inet_aton, none when an octet is over 255),
			// so sipcar does not guess: it is left as text, like a host name.
		}
		i = j
	}
	k := skipLWS(raw, i, end)
	if k < end && raw[k] == ':' {
		p := skipLWS(raw, k+1, end)
		q := p
		for q < end && isDigit(raw[q]) {
			q++
		}
		n, ok := parseUint(raw[p:q], 65535)
		if q == p || !ok {
			return hp, p, malformed(where, p, "invalid port")
		}
		hp.port, hp.portNum = span{p, q}, uint16(n)
		i = q
	}
	return hp, i, nil
}

// looksNumeric reports a host made of digits and dots only, which must then be an IPv4 address.
// (A host name's last label cannot start with a digit, RFC 1123 section 2.1.)
func looksNumeric(b []byte) bool {
	for _, c := range b {
		if !isDigit(c) && c != '.' {
			return false
		}
	}
	return true
}

// isIPv4ABNF reports whether b is an IPv4address by RFC 3261's ABNF:
// 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT, whatever the digits.
func isIPv4ABNF(b []byte) bool {
	groups, digits := 1, 0
	for _, c := range b {
		switch {
		case isDigit(c):
			if digits++; digits > 3 {
				return false
			}
		case c == '.' && digits > 0:
			groups, digits = groups+1, 0
		default:
			return false
		}
	}
	return groups == 4 && digits > 0
}

// viaParm is one via-parm of a Via header value.
type viaParm struct {
	whole     span // the via-parm, from sent-protocol to its last parameter
	transport span
	sentBy    hostPort
	received  span // value of received, empty if absent
	rport     span // value of rport, empty if absent or without value
	maddr     span // value of maddr, empty if absent
	hasRport  bool
}

// eachVia calls fn for every comma-separated via-parm in the Via value at v.
func eachVia(raw []byte, v span, fn func(viaParm) error) error {
	i := v.start
	for {
		var p viaParm
		i = skipLWS(raw, i, v.end)
		p.whole.start = i
		// sent-protocol: name SLASH version SLASH transport, SLASH allowing LWS around it.
		for part := 0; part < 3; part++ {
			j := i
			for j < v.end && tokenChars[raw[j]] {
				j++
			}
			if j == i {
				return malformed("Via", i, "invalid sent-protocol")
			}
			if part == 2 {
				p.transport = span{i, j}
			}
			i = skipLWS(raw, j, v.end)
			if part < 2 {
				if i >= v.end || raw[i] != '/' {
					return malformed("Via", i, "invalid sent-protocol")
				}
				i = skipLWS(raw, i+1, v.end)
			}
		}
		if i == p.transport.end {
			return malformed("Via", i, "no white space before sent-by")
		}
		hp, j, err := parseHostPort(raw, i, v.end, "Via")
		if err != nil {
			return err
		}
		p.sentBy = hp
		p.whole.end = j
		i = skipLWS(raw, j, v.end)
		for i < v.end && raw[i] == ';' {
			i = skipLWS(raw, i+1, v.end)
			ns := i
			for i < v.end && tokenChars[raw[i]] {
				i++
			}
			if i == ns {
				return malformed("Via", ns, "empty parameter")
			}
			name := span{ns, i}
			p.whole.end = i
			i = skipLWS(raw, i, v.end)
			val := span{i, i}
			hasVal := false
			if i < v.end && raw[i] == '=' {
				i = skipLWS(raw, i+1, v.end)
				vs := i
				if i < v.end && raw[i] == '"' {
					e := quotedEnd(raw, i, v.end)
					if e < 0 {
						return malformed("Via", i, "unterminated quoted string")
					}
					i = e
				} else {
					for i < v.end && (tokenChars[raw[i]] || raw[i] == ':' || raw[i] == '[' || raw[i] == ']') {
						i++
					}
				}
				if i == vs {
					return malformed("Via", vs, "parameter without a value after '='")
				}
				val, hasVal = span{vs, i}, true
				p.whole.end = i
				i = skipLWS(raw, i, v.end)
			}
			n := raw[name.start:name.end]
			switch {
			case equalFold(n, "received"):
				if !hasVal {
					return malformed("Via", name.start, "received without a value")
				}
				p.received = val
			case equalFold(n, "rport"):
				p.hasRport, p.rport = true, val
				if hasVal {
					if _, ok := parseUint(raw[val.start:val.end], 65535); !ok {
						return malformed("Via", val.start, "rport is not a port")
					}
				}
			case equalFold(n, "maddr"):
				if !hasVal {
					return malformed("Via", name.start, "maddr without a value")
				}
				p.maddr = val
			}
		}
		if err := fn(p); err != nil {
			return err
		}
		if i >= v.end {
			return nil
		}
		if raw[i] != ',' {
			return malformed("Via", i, "unexpected character")
		}
		i++
	}
}

// quotedEnd returns the index just past the quoted string starting at raw[i] == '"', or -1.
func quotedEnd(raw []byte, i, end int) int {
	for j := i + 1; j < end; j++ {
		switch raw[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// nameAddr is one element of a Contact, Route, Record-Route, Path, From or To value.
type nameAddr struct {
	star   bool // Contact: *
	uri    span
	angled bool
	params span // header parameters after the URI, from the first ';'
}

// eachNameAddr calls fn for every comma-separated name-addr or addr-spec in the value at v.
// Route, Record-Route and Path require angle brackets. (From and To are not read with it: see
// tagOf.)
func eachNameAddr(raw []byte, v span, kind hdrKind, fn func(nameAddr) error) error {
	where := headerName(kind)
	i := v.start
	for {
		var na nameAddr
		i = skipLWS(raw, i, v.end)
		if i >= v.end {
			return malformed(where, i, "empty value")
		}
		switch {
		case raw[i] == '*' && kind == hContact:
			na.star = true
			i = skipLWS(raw, i+1, v.end)
		default:
			// A display name (quoted string or tokens) ends at '<'; without '<' it is an addr-spec.
			j := i
			if raw[j] == '"' {
				e := quotedEnd(raw, j, v.end)
				if e < 0 {
					return malformed(where, j, "unterminated quoted display name")
				}
				j = skipLWS(raw, e, v.end)
				if j >= v.end || raw[j] != '<' {
					return malformed(where, j, "quoted display name not followed by <URI>")
				}
			} else {
				for j < v.end && raw[j] != '<' && raw[j] != ',' && raw[j] != ';' && raw[j] != '"' {
					j++
				}
			}
			if j < v.end && raw[j] == '<' {
				if raw[i] != '"' && !isDisplayTokens(raw[i:j]) {
					return malformed(where, i, "display name is neither tokens nor a quoted string")
				}
				e := bytes.IndexByte(raw[j:v.end], '>')
				if e < 0 {
					return malformed(where, j, "'<' without '>'")
				}
				na.uri, na.angled = span{j + 1, j + e}, true
				i = j + e + 1
			} else {
				if kind == hRoute || kind == hRecordRoute || kind == hPath {
					return malformed(where, i, "URI not in angle brackets")
				}
				e := i
				for e < v.end && raw[e] != ';' && raw[e] != ',' && !isLWS(raw[e]) {
					e++
				}
				na.uri = span{i, e}
				if bytes.IndexByte(raw[i:e], '?') >= 0 {
					return malformed(where, i, "URI with headers must be in angle brackets")
				}
				i = e
			}
			if _, err := parseURI(raw, na.uri, where); err != nil {
				return err
			}
			i = skipLWS(raw, i, v.end)
		}
		ps := i
		for i < v.end && raw[i] == ';' {
			i = skipLWS(raw, i+1, v.end)
			ns := i
			for i < v.end && tokenChars[raw[i]] {
				i++
			}
			if i == ns {
				return malformed(where, ns, "empty parameter")
			}
			i = skipLWS(raw, i, v.end)
			if i < v.end && raw[i] == '=' {
				i = skipLWS(raw, i+1, v.end)
				vs := i
				if i < v.end && raw[i] == '"' {
					e := quotedEnd(raw, i, v.end)
					if e < 0 {
						return malformed(where, i, "unterminated quoted string")
					}
					i = e
				} else {
					for i < v.end && (tokenChars[raw[i]] || raw[i] == ':' || raw[i] == '[' || raw[i] == ']') {
						i++
					}
				}
				if i == vs {
					return malformed(where, vs, "parameter without a value after '='")
				}
				i = skipLWS(raw, i, v.end)
			}
		}
		na.params = span{ps, i}
		if err := fn(na); err != nil {
			return err
		}
		if i >= v.end {
			return nil
		}
		if raw[i] != ',' {
			return malformed(where, i, "unexpected character")
		}
		i++
	}
}

// isDisplayTokens reports whether b is empty or tokens separated by LWS (an unquoted display
// name).
func isDisplayTokens(b []byte) bool {
	for _, c := range b {
		if !tokenChars[c] && !isLWS(c) {
			return false
		}
	}
	return true
}

func headerName(k hdrKind) string {
	switch k {
	case hVia:
		return "Via"
	case hContact:
		return "Contact"
	case hRecordRoute:
		return "Record-Route"
	case hRoute:
		return "Route"
	case hPath:
		return "Path"
	case hFrom:
		return "From"
	case hTo:
		return "To"
	}
	return "header"
}

// tagOf finds the tag parameter of a From or To value. sipcar never rewrites From or To, so it
// does not judge what they hold (a URI with a masked host, spaces, an unknown scheme, a display
// name of any characters): it reads only as much structure as places the tag beyond doubt. A
// quoted string must end and a '<' must have its '>', because otherwise where the header
// parameters start, and so which tag the dialog has, is a guess that the next hop may make
// differently. The header parameters follow the '>' of a name-addr, or the first ';' of an
// addr-spec (RFC 3261 section 20: without angle brackets, parameters are header parameters).
func tagOf(raw []byte, v span, where string) (tag span, has bool, err error) {
	params := v.end
scan:
	for i := v.start; i < v.end; i++ {
		switch raw[i] {
		case '"':
			e := quotedEnd(raw, i, v.end)
			if e < 0 {
				return span{}, false, malformed(where, i, "unterminated quoted string: the tag cannot be read")
			}
			i = e - 1
		case '<':
			e := bytes.IndexByte(raw[i:v.end], '>')
			if e < 0 {
				return span{}, false, malformed(where, i, "'<' without '>': the tag cannot be read")
			}
			params = i + e + 1
			break scan
		case ';':
			params = i
			break scan
		}
	}
	_, val, ok := findParam(raw, span{params, v.end}, "tag")
	return val, ok, nil
}

// paramValue returns the value of parameter name among ";name=value" parameters at s: nil when
// it is absent, empty (not nil) when it has no value.
func paramValue(raw []byte, s span, name string) []byte {
	_, v, ok := findParam(raw, s, name)
	if !ok {
		return nil
	}
	return raw[v.start:v.end]
}

// findParam finds parameter name among ";name=value" parameters at s: the span from its ';' to
// the end of its value (to delete it), and its value's span (empty for a parameter without one).
func findParam(raw []byte, s span, name string) (whole, value span, ok bool) {
	i := s.start
	for i < s.end {
		if raw[i] != ';' {
			i++
			continue
		}
		semi := i
		i = skipLWS(raw, i+1, s.end)
		ns := i
		for i < s.end && tokenChars[raw[i]] {
			i++
		}
		match := equalFold(raw[ns:i], name)
		ne := i
		i = skipLWS(raw, i, s.end)
		if i < s.end && raw[i] == '=' {
			i = skipLWS(raw, i+1, s.end)
			vs := i
			if i < s.end && raw[i] == '"' {
				if e := quotedEnd(raw, i, s.end); e > 0 {
					i = e
				} else {
					i = s.end
				}
			} else {
				for i < s.end && raw[i] != ';' && !isLWS(raw[i]) {
					i++
				}
			}
			if match {
				return span{semi, i}, span{vs, i}, true
			}
		} else if match {
			return span{semi, ne}, span{i, i}, true
		}
	}
	return span{}, span{}, false
}

// parseIPv6ABNFBug reads an IPv6 reference with three colons before an embedded IPv4 address
// ("2001:db8:::192.0.2.1"), which RFC 3261's ABNF allows by mistake and RFC 5118 section 4.10
// asks implementations to tolerate.
func parseIPv6ABNFBug(b []byte) (netip.Addr, bool) {
	i := bytes.Index(b, []byte(":::"))
	if i < 0 || len(b) > 45 {
		return netip.Addr{}, false
	}
	var buf [45]byte
	n := copy(buf[:], b[:i+2])
	n += copy(buf[n:], b[i+3:])
	return parseIP(buf[:n])
}
