package rewrite

import (
	"bytes"
	"net/netip"
)

// The SDP rewriter scans lines itself instead of using a full SDP parser: real devices send SDP
// that strict parsers refuse (no CRLF on the last line, lower-case "in ip4", a space in the o=
// user name, session c= after t=), and the rewrite must leave every byte but the addresses as it
// was. It reads only the lines that carry addresses or decide how a stream is relayed.

// connField is an SDP address: c=, o= or the address of a=rtcp.
type connField struct {
	ok       bool
	line     span
	addrtype span // "IP4" or "IP6" as written
	addr     span // the address, without a multicast /ttl suffix
	ip       netip.Addr
	suffix   bool // multicast "/ttl[/n]" follows the address
}

// named reports an IP literal other than the unspecified (hold) address: one to translate,
// whatever follows it.
func (c *connField) named() bool {
	return c.ok && c.ip.IsValid() && !c.ip.IsUnspecified()
}

// usable reports a unicast IP literal that is not the unspecified (hold) address: one a stream
// can be relayed to.
func (c *connField) usable() bool {
	return c.ok && c.ip.IsValid() && !c.ip.IsUnspecified() && !c.ip.IsMulticast() && !c.suffix
}

// sdpMedia is one m= section of an SDP body.
type sdpMedia struct {
	part, index  int
	media, proto span
	port         span // the port digits of m=, without a "/n" port count
	portNum      uint16
	c            connField // media-level c=, if any
	rtcp         connField // address of a=rtcp, if it names one
	rtcpPort     span      // port of a=rtcp, empty if there is no a=rtcp
	rtcpPortNum  uint16
	mux          bool
	dir          Direction
	dirSet       bool
	sectionEnd   int // offset just past the last line of the section
	stream       int // index in Result.Streams
}

// sdpPart is one SDP body of a message (the body itself, or one multipart part).
type sdpPart struct {
	body     span
	crlf     bool
	origin   connField
	sessC    connField
	sessDir  Direction
	firstMed int  // index in Result.media of the part's first m= section
	lenHdr   span // value of a multipart part's own Content-Length header, if it has one
}

// iceAttribute reports the attributes that belong to ICE. sipcar anchors media, so a peer must
// send to the relay address it advertises and nowhere else: candidates would name inside
// addresses and let the peers bypass the relay. They are stripped, and with them the ICE
// credentials and options, so that neither peer starts ICE checks against a relay that does not
// take part in them.
func iceAttribute(name []byte) bool {
	for _, a := range [...]string{"candidate", "remote-candidates", "ice-ufrag", "ice-pwd", "ice-options",
		"ice-lite", "ice-mismatch", "ice-pacing", "end-of-candidates"} {
		if equalFold(name, a) {
			return true
		}
	}
	return false
}

// planSDP scans the SDP body at b, adding its m= sections to r.media and the lines to strip to
// r.strip. It checks every line it will rewrite and reads nothing from a translator, so that a
// malformed body is refused before any binding is made.
func (r *Result) planSDP(raw []byte, b span, partIdx int, lenHdr span) error {
	p := sdpPart{body: b, firstMed: len(r.media), lenHdr: lenHdr}
	inMedia := false
	var cur *sdpMedia
	index := 0
	pos := b.start
	first := true
	for pos < b.end {
		eol := bytes.IndexByte(raw[pos:b.end], '\n')
		lineEnd := b.end
		if eol >= 0 {
			lineEnd = pos + eol + 1
		}
		content := trimEOL(raw[pos:lineEnd])
		if first && eol >= 0 {
			p.crlf = eol > 0 && raw[pos+eol-1] == '\r'
		}
		line := span{pos, lineEnd}
		cs := pos
		pos = lineEnd
		if len(trimRightLWS(content)) == 0 {
			continue
		}
		if len(content) < 2 || content[1] != '=' || !isAlpha(content[0]) {
			return malformed("SDP", cs, "line is not of the form <type>=<value>")
		}
		if first && content[0] != 'v' {
			return malformed("SDP", cs, "does not start with v=")
		}
		first = false
		val := span{cs + 2, cs + len(content)}
		switch content[0] {
		case 'o':
			if inMedia {
				return malformed("SDP o=", cs, "o= inside a media description")
			}
			if p.origin.ok {
				return malformed("SDP o=", cs, "more than one o=")
			}
			if err := parseOrigin(raw, val, &p.origin); err != nil {
				return err
			}
			p.origin.line = line
		case 'c':
			var c connField
			if err := parseConn(raw, val, &c); err != nil {
				return err
			}
			c.line = line
			// One address per level: a second would be left untranslated (RFC 4566 allows more
			// only for multicast sessions, which sipcar does not relay).
			if inMedia {
				if cur.c.ok {
					return malformed("SDP c=", cs, "more than one c= in a media description")
				}
				cur.c = c
			} else {
				if p.sessC.ok {
					return malformed("SDP c=", cs, "more than one session-level c=")
				}
				p.sessC = c
			}
		case 'm':
			if err := r.flushMedia(cur, cs); err != nil {
				return err
			}
			r.media = append(r.media, sdpMedia{part: partIdx, index: index})
			cur = &r.media[len(r.media)-1]
			index++
			inMedia = true
			if err := parseMediaLine(raw, val, cur); err != nil {
				return err
			}
		case 'a':
			name, value := attribute(raw, val)
			nb := raw[name.start:name.end]
			switch {
			case iceAttribute(nb):
				r.strip = append(r.strip, line)
			case equalFold(nb, "rtcp") && inMedia:
				if cur.rtcpPort.len() > 0 {
					return malformed("SDP a=rtcp", cs, "more than one a=rtcp in a media description")
				}
				if err := parseRTCPAttr(raw, value, cur); err != nil {
					return err
				}
			case equalFold(nb, "rtcp-mux") && inMedia:
				cur.mux = true
			default:
				if d, ok := direction(nb); ok {
					if inMedia {
						cur.dir, cur.dirSet = d, true
					} else {
						p.sessDir = d
					}
				}
			}
		}
	}
	if first {
		return malformed("SDP", b.start, "empty SDP body")
	}
	if err := r.flushMedia(cur, b.end); err != nil {
		return err
	}
	for _, m := range r.media[p.firstMed:] {
		if m.portNum != 0 && !m.c.ok && !p.sessC.ok {
			return malformed("SDP c=", m.port.start, "media description without a connection address")
		}
	}
	r.parts = append(r.parts, p)
	return nil
}

// flushMedia completes the m= section that ends at offset end.
func (r *Result) flushMedia(m *sdpMedia, end int) error {
	if m == nil {
		return nil
	}
	m.sectionEnd = end
	return nil
}

func direction(name []byte) (Direction, bool) {
	switch {
	case equalFold(name, "sendrecv"):
		return SendRecv, true
	case equalFold(name, "sendonly"):
		return SendOnly, true
	case equalFold(name, "recvonly"):
		return RecvOnly, true
	case equalFold(name, "inactive"):
		return Inactive, true
	}
	return 0, false
}

// attribute splits an a= value into name and value ("rtcp:5001 IN IP4 x" -> "rtcp", "5001 IN...").
func attribute(raw []byte, v span) (name, value span) {
	i := bytes.IndexByte(raw[v.start:v.end], ':')
	if i < 0 {
		return span{v.start, v.start + len(trimRightLWS(raw[v.start:v.end]))}, span{v.end, v.end}
	}
	return span{v.start, v.start + i}, span{v.start + i + 1, v.end}
}

// fields splits the value at v on runs of spaces and tabs into at most len(out) fields and
// returns how many there were (which may exceed len(out)).
func fields(raw []byte, v span, out []span) int {
	n := 0
	i := v.start
	for {
		for i < v.end && (raw[i] == ' ' || raw[i] == '\t') {
			i++
		}
		if i >= v.end {
			return n
		}
		s := i
		for i < v.end && raw[i] != ' ' && raw[i] != '\t' {
			i++
		}
		if n < len(out) {
			out[n] = span{s, i}
		}
		n++
	}
}

// parseAddress fills c from nettype, addrtype and address fields.
func parseAddress(raw []byte, nettype, addrtype, addr span, c *connField) {
	c.ok = true
	c.addrtype = addrtype
	a := raw[addr.start:addr.end]
	if i := bytes.IndexByte(a, '/'); i >= 0 {
		c.suffix = true
		addr.end = addr.start + i
		a = a[:i]
	}
	c.addr = addr
	if !equalFold(raw[nettype.start:nettype.end], "IN") {
		return
	}
	// RFC 4566 writes IPv6 addresses bare, but devices (sipp among them) bracket them; the
	// address is read either way, and a translated one is written bare.
	if len(a) > 2 && a[0] == '[' && a[len(a)-1] == ']' {
		a = a[1 : len(a)-1]
	}
	if ip, ok := parseIP(a); ok {
		c.ip = ip
	}
}

// parseConn reads "c=<nettype> <addrtype> <connection-address>".
func parseConn(raw []byte, v span, c *connField) error {
	var f [3]span
	if fields(raw, v, f[:]) != 3 {
		return malformed("SDP c=", v.start, "not <nettype> <addrtype> <address>")
	}
	parseAddress(raw, f[0], f[1], f[2], c)
	return nil
}

// parseOrigin reads "o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>". The
// user name may contain spaces (seen from real devices), so the address fields are taken from
// the end of the line.
func parseOrigin(raw []byte, v span, c *connField) error {
	var f [32]span
	n := fields(raw, v, f[:])
	if n < 6 || n > len(f) {
		return malformed("SDP o=", v.start, "not <username> <sess-id> <sess-version> <nettype> <addrtype> <address>")
	}
	parseAddress(raw, f[n-3], f[n-2], f[n-1], c)
	return nil
}

// parseMediaLine reads "m=<media> <port>[/<number>] <proto> <fmt> ...".
func parseMediaLine(raw []byte, v span, m *sdpMedia) error {
	var f [3]span
	if fields(raw, v, f[:]) < 3 {
		return malformed("SDP m=", v.start, "not <media> <port> <proto> <fmt>...")
	}
	m.media, m.proto = f[0], f[2]
	port := f[1]
	if i := bytes.IndexByte(raw[port.start:port.end], '/'); i >= 0 {
		if _, ok := parseUint(raw[port.start+i+1:port.end], 65535); !ok {
			return malformed("SDP m=", port.start, "invalid port count")
		}
		port.end = port.start + i
	}
	n, ok := parseUint(raw[port.start:port.end], 65535)
	if !ok {
		return malformed("SDP m=", port.start, "port is not a number from 0 to 65535")
	}
	m.port, m.portNum = port, uint16(n)
	return nil
}

// parseRTCPAttr reads "a=rtcp:<port> [<nettype> <addrtype> <address>]" (RFC 3605).
func parseRTCPAttr(raw []byte, v span, m *sdpMedia) error {
	var f [4]span
	n := fields(raw, v, f[:])
	if n != 1 && n != 4 {
		return malformed("SDP a=rtcp", v.start, "not <port> [<nettype> <addrtype> <address>]")
	}
	p, ok := parseUint(raw[f[0].start:f[0].end], 65535)
	if !ok {
		return malformed("SDP a=rtcp", f[0].start, "port is not a number from 0 to 65535")
	}
	m.rtcpPort, m.rtcpPortNum = f[0], uint16(p)
	if n == 4 {
		parseAddress(raw, f[1], f[2], f[3], &m.rtcp)
	}
	return nil
}

// isTCPProto reports media protocols carried over TCP (TCP/MSRP, TCP/BFCP, TCP/TLS/RTP/SAVP ...),
// which sipcar does not relay.
func isTCPProto(p []byte) bool {
	return hasPrefixFold(p, "TCP") && (len(p) == 3 || p[3] == '/')
}
