package rewrite

import (
	"bytes"
	"net/netip"
	"strconv"
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

// named reports an IP literal to translate: not the unspecified (hold) address, and not a
// multicast group, which is the session's address rather than anyone's on one side (RFC 4566
// section 5.7), so a multicast session is carried as it is.
func (c *connField) named() bool {
	return c.ok && c.ip.IsValid() && !c.ip.IsUnspecified() && !c.ip.IsMulticast()
}

// usable reports a unicast IP literal that is not the unspecified (hold) address: one a stream
// can be relayed to.
func (c *connField) usable() bool {
	return c.ok && c.ip.IsValid() && !c.ip.IsUnspecified() && !c.ip.IsMulticast() && !c.suffix
}

// sdpMedia is one m= section of an SDP body.
type sdpMedia struct {
	part, index  int
	line         int // the m= line's number in its SDP body, from 1
	sectionStart int // offset of the m= line
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
	// ice: the section has ICE attributes. host and srflx are its best UDP candidates for
	// component 1 of each kind (see defaultCandidate).
	ice         bool
	host, srflx candidate
	rtpmaps     span // indexes of its a=rtpmap lines in Result.rtpmaps
}

// sdpPart is one SDP body of a message (the body itself, or one multipart part).
type sdpPart struct {
	body     span
	crlf     bool
	origin   connField
	sessC    connField
	sessDir  Direction
	sessICE  bool // ICE attributes at session level (a=ice-ufrag, a=ice-options, ...)
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
//
// A line that is not <type>=<value> (a stray " =extmap:..." from a softphone, a line of text) is
// kept byte for byte and not read, like a line of an unknown type: the body is carried. The one
// exception is a line that a lenient parser would still read as one that carries an address or
// a port (" c=IN IP4 ...", "m =audio ...", "a = rtcp:..."): left as it is, it would hand the
// receiver an address sipcar did not translate, and read as what it seems, it might be taken by a
// strict receiver for nothing at all; so it is refused (or, for an ICE attribute, removed like
// every ICE attribute).
func (r *Result) planSDP(raw []byte, b span, partIdx int, lenHdr span) error {
	p := sdpPart{body: b, firstMed: len(r.media), lenHdr: lenHdr}
	inMedia := false
	var cur *sdpMedia
	index := 0
	pos := b.start
	first := true
	lineNo := 0
	for pos < b.end {
		line, content := sdpLine(raw, pos, b.end)
		if first && raw[line.end-1] == '\n' {
			p.crlf = bytes.HasSuffix(raw[line.start:line.end], []byte("\r\n"))
		}
		cs := pos
		pos = line.end
		lineNo++
		if len(trimRightLWS(content)) == 0 {
			continue
		}
		if bytes.IndexByte(content, '\r') >= 0 {
			return sdpError("SDP", cs, lineNo, bareCR)
		}
		if len(content) < 2 || content[1] != '=' || !isAlpha(content[0]) {
			if first {
				return sdpError("SDP", cs, lineNo, "does not start with v=")
			}
			t, v, ok := readsAs(content)
			if !ok {
				continue // kept as it is
			}
			val := span{cs + v, cs + len(content)}
			switch t {
			case 'c', 'o', 'm':
				return sdpError("SDP", cs, lineNo, "not <type>=<value>, yet readable as "+string(t)+"=: its address cannot be translated safely")
			case 'a':
				name, _ := attribute(raw, val)
				nb := raw[name.start:name.end]
				switch {
				case iceAttribute(nb):
					r.strip = append(r.strip, line)
				case equalFold(nb, "rtcp"):
					return sdpError("SDP", cs, lineNo, "not <type>=<value>, yet readable as a=rtcp: its port cannot be translated safely")
				}
			}
			continue
		}
		if first && content[0] != 'v' {
			return sdpError("SDP", cs, lineNo, "does not start with v=")
		}
		first = false
		val := span{cs + 2, cs + len(content)}
		var err error
		switch content[0] {
		case 'o':
			switch {
			case inMedia:
				err = malformed("SDP o=", cs, "o= inside a media description")
			case p.origin.ok:
				err = malformed("SDP o=", cs, "more than one o=")
			default:
				err = parseOrigin(raw, val, &p.origin)
				p.origin.line = line
			}
		case 'c':
			var c connField
			if err = parseConn(raw, val, &c); err != nil {
				break
			}
			c.line = line
			// One address per level: a second would be left untranslated (RFC 4566 allows more
			// only for multicast sessions, which sipcar does not relay).
			switch {
			case inMedia && cur.c.ok:
				err = malformed("SDP c=", cs, "more than one c= in a media description")
			case inMedia:
				cur.c = c
			case p.sessC.ok:
				err = malformed("SDP c=", cs, "more than one session-level c=")
			default:
				p.sessC = c
			}
		case 'm':
			r.flushMedia(cur, cs)
			r.media = append(r.media, sdpMedia{part: partIdx, index: index, line: lineNo, sectionStart: cs,
				rtpmaps: span{len(r.rtpmaps), len(r.rtpmaps)}})
			cur = &r.media[len(r.media)-1]
			index++
			inMedia = true
			err = parseMediaLine(raw, val, cur)
		case 'a':
			name, value := attribute(raw, val)
			nb := raw[name.start:name.end]
			switch {
			case iceAttribute(nb):
				r.strip = append(r.strip, line)
				if inMedia {
					cur.ice = true
					if equalFold(nb, "candidate") {
						cur.noteCandidate(raw, value)
					}
				} else {
					p.sessICE = true
				}
			case equalFold(nb, "rtcp") && inMedia:
				if cur.rtcpPort.len() > 0 {
					err = malformed("SDP a=rtcp", cs, "more than one a=rtcp in a media description")
				} else {
					err = parseRTCPAttr(raw, value, cur)
				}
			case equalFold(nb, "rtcp-mux") && inMedia:
				cur.mux = true
			case equalFold(nb, "rtpmap") && inMedia:
				if m, ok := parseRTPMap(raw, value); ok {
					r.rtpmaps = append(r.rtpmaps, m)
					cur.rtpmaps.end = len(r.rtpmaps)
				}
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
		if err != nil {
			return atLine(err, lineNo)
		}
	}
	if first {
		return sdpError("SDP", b.start, 1, "empty SDP body")
	}
	r.flushMedia(cur, b.end)
	for _, m := range r.media[p.firstMed:] {
		if m.portNum != 0 && !m.c.ok && !p.sessC.ok {
			return sdpError("SDP c=", m.port.start, m.line, "media description without a connection address")
		}
	}
	r.parts = append(r.parts, p)
	return nil
}

// sdpLine returns the line of an SDP body that starts at pos (its end included) and its content
// (without it). A last line without LF may end in the CR of a CRLF whose LF was lost.
func sdpLine(raw []byte, pos, end int) (line span, content []byte) {
	line = span{pos, end}
	if eol := bytes.IndexByte(raw[pos:end], '\n'); eol >= 0 {
		line.end = pos + eol + 1
	}
	content = trimEOL(raw[pos:line.end])
	if n := len(content); raw[line.end-1] != '\n' && n > 0 && content[n-1] == '\r' {
		content = content[:n-1]
	}
	return line, content
}

// bareCR is why a body line with a CR inside is refused: a bare CR would end the line for some
// parsers and not for others, so what follows it may be a line sipcar cannot see.
const bareCR = "carriage return inside a line"

// sdpFrag is an SDP fragment body (RFC 8840's application/trickle-ice-sdpfrag), or part.
type sdpFrag struct {
	body   span
	lenHdr span // value of a multipart part's own Content-Length header, if it has one
}

// planFrag strips the ICE attributes of a trickle-ICE fragment, which an INFO carries in the
// middle of a call (RFC 8840): sipcar removed ICE from the call's SDP (see iceAttribute), so the
// peer runs no ICE with the sender and the candidates mean nothing to it, while they name the
// sender's inside addresses (raddr too). The rest of the fragment (m=, a=mid) is carried. The
// lines are read like SDP's: one readable as an ICE attribute by a lenient parser goes too, and a
// carriage return inside a line is refused.
func (r *Result) planFrag(raw []byte, b span, lenHdr span) error {
	lineNo := 0
	for pos := b.start; pos < b.end; {
		line, content := sdpLine(raw, pos, b.end)
		cs := pos
		pos = line.end
		lineNo++
		if bytes.IndexByte(content, '\r') >= 0 {
			return sdpError("SDP fragment", cs, lineNo, bareCR)
		}
		t, v, ok := byte(0), 2, len(content) >= 2 && content[1] == '='
		if ok {
			t = content[0]
		} else {
			t, v, ok = readsAs(content)
		}
		if !ok || t != 'a' {
			continue
		}
		if name, _ := attribute(raw, span{cs + v, cs + len(content)}); iceAttribute(raw[name.start:name.end]) {
			r.strip = append(r.strip, line)
		}
	}
	r.frags = append(r.frags, sdpFrag{body: b, lenHdr: lenHdr})
	return nil
}

// readsAs reports the type a line that is not <type>=<value> would have for a parser that skips
// white space around the type letter, and where its value starts.
func readsAs(content []byte) (t byte, value int, ok bool) {
	i := 0
	for i < len(content) && (content[i] == ' ' || content[i] == '\t') {
		i++
	}
	if i >= len(content) || !isAlpha(content[i]) {
		return 0, 0, false
	}
	t = content[i]
	i++
	for i < len(content) && (content[i] == ' ' || content[i] == '\t') {
		i++
	}
	if i >= len(content) || content[i] != '=' {
		return 0, 0, false
	}
	return t, i + 1, true
}

// sdpError is a malformed SDP line, numbered from 1 within its SDP body so that the Warning the
// relay answers with says which line it was.
func sdpError(where string, off, line int, reason string) error {
	return malformed(where, off, "line "+strconv.Itoa(line)+": "+reason)
}

// atLine prefixes the reason of an *Error with the SDP line it was found on.
func atLine(err error, line int) error {
	if e, ok := err.(*Error); ok {
		return sdpError(e.Where, e.Offset, line, e.Reason)
	}
	return err
}

// flushMedia completes the m= section that ends at offset end.
func (r *Result) flushMedia(m *sdpMedia, end int) {
	if m != nil {
		m.sectionEnd = end
	}
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
// White space around the name is not part of it ("a= rtcp :5001" is read as a=rtcp, which is what
// a lenient receiver does, so that its port is translated too).
func attribute(raw []byte, v span) (name, value span) {
	name, value = v, span{v.end, v.end}
	if i := bytes.IndexByte(raw[v.start:v.end], ':'); i >= 0 {
		name, value = span{v.start, v.start + i}, span{v.start + i + 1, v.end}
	}
	for name.start < name.end && (raw[name.start] == ' ' || raw[name.start] == '\t') {
		name.start++
	}
	for name.end > name.start && isLWS(raw[name.end-1]) {
		name.end--
	}
	return name, value
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

// parseConn reads "c=<nettype> <addrtype> <connection-address>". A c= without the address names
// none: it is read as no c= at all (so a stream with a port that has nothing else is refused
// for want of an address, and a rejected one is carried).
func parseConn(raw []byte, v span, c *connField) error {
	var f [3]span
	switch fields(raw, v, f[:]) {
	case 2:
		return nil
	case 3:
		parseAddress(raw, f[0], f[1], f[2], c)
		return nil
	}
	return malformed("SDP c=", v.start, "not <nettype> <addrtype> <address>")
}

// parseOrigin reads "o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>". The
// user name may contain spaces (seen from real devices) or be empty ("o= 1 1 IN IP4 ..."), so the
// address fields are taken from the end of the line.
func parseOrigin(raw []byte, v span, c *connField) error {
	var f [32]span
	n := fields(raw, v, f[:])
	if n < 5 || n > len(f) {
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

// parseRTPMap reads "a=rtpmap:<payload type> <encoding name>/<clock rate>[/<parameters>]"
// (RFC 8866 6.6). One that does not parse is no address: it is left as it is, and not reported.
func parseRTPMap(raw []byte, v span) (RTPMap, bool) {
	var f [2]span
	if fields(raw, v, f[:]) != 2 {
		return RTPMap{}, false
	}
	pt, ok := parseUint(raw[f[0].start:f[0].end], 127)
	if !ok {
		return RTPMap{}, false
	}
	enc := raw[f[1].start:f[1].end]
	slash := bytes.IndexByte(enc, '/')
	if slash <= 0 {
		return RTPMap{}, false
	}
	clock := enc[slash+1:]
	if i := bytes.IndexByte(clock, '/'); i >= 0 {
		clock = clock[:i]
	}
	rate, ok := parseUint(clock, 1<<24)
	if !ok || rate == 0 {
		return RTPMap{}, false
	}
	return RTPMap{Type: uint8(pt), Encoding: internEncoding(enc[:slash]), ClockRate: uint32(rate)}, true
}

// internEncoding returns the common encoding names without allocating.
func internEncoding(b []byte) string {
	for _, s := range [...]string{"PCMU", "PCMA", "G722", "G729", "telephone-event", "opus", "CN", "iLBC",
		"speex", "AMR", "AMR-WB", "GSM", "G726-32", "H264", "VP8", "VP9", "red", "ulpfec", "rtx"} {
		if string(b) == s {
			return s
		}
	}
	return string(b)
}

// isTCPProto reports media protocols carried over TCP (TCP/MSRP, TCP/BFCP, TCP/TLS/RTP/SAVP ...),
// which sipcar does not relay.
func isTCPProto(p []byte) bool {
	return hasPrefixFold(p, "TCP") && (len(p) == 3 || p[3] == '/')
}

// candidate is one ICE candidate (RFC 8839 section 5.1) as far as sipcar reads it.
type candidate struct {
	ok         bool
	foundation span
	component  uint64
	udp        bool
	priority   uint64
	addr       netip.AddrPort
	kind       candidateKind
}

type candidateKind uint8

const (
	candOther candidateKind = iota // relay, or a type sipcar does not know
	candHost
	candReflexive // srflx or prflx
)

// parseCandidate reads "<foundation> <component-id> <transport> <priority> <address> <port> typ
// <type> ...". A candidate whose address is a name (an mDNS ".local" host candidate) or is not
// unicast has ok false: sipcar does not resolve names, and cannot send to the rest.
func parseCandidate(raw []byte, v span) candidate {
	var f [8]span
	var c candidate
	if fields(raw, v, f[:]) < 8 || !equalFold(raw[f[6].start:f[6].end], "typ") {
		return c
	}
	var ok bool
	if c.component, ok = parseUint(raw[f[1].start:f[1].end], 256); !ok {
		return c
	}
	if c.priority, ok = parseUint(raw[f[3].start:f[3].end], 1<<32-1); !ok {
		return c
	}
	port, ok := parseUint(raw[f[5].start:f[5].end], 65535)
	ip, ipOK := parseIP(raw[f[4].start:f[4].end])
	if !ok || port == 0 || !ipOK || ip.IsUnspecified() || ip.IsMulticast() {
		return c
	}
	c.ok = true
	c.foundation = f[0]
	c.udp = equalFold(raw[f[2].start:f[2].end], "udp")
	c.addr = netip.AddrPortFrom(ip, uint16(port))
	switch t := raw[f[7].start:f[7].end]; {
	case equalFold(t, "host"):
		c.kind = candHost
	case equalFold(t, "srflx"), equalFold(t, "prflx"):
		c.kind = candReflexive
	}
	return c
}

// noteCandidate keeps the candidate at v if it is the best so far of its kind: UDP, component 1
// (RTP), highest priority, the first among equals.
func (m *sdpMedia) noteCandidate(raw []byte, v span) {
	c := parseCandidate(raw, v)
	if !c.ok || !c.udp || c.component != 1 {
		return
	}
	best := &m.host
	switch c.kind {
	case candHost:
	case candReflexive:
		best = &m.srflx
	default:
		return
	}
	if !best.ok || c.priority > best.priority {
		*best = c
	}
}

// isPlaceholder reports the ICE placeholder of a trickle-ICE or WebRTC SDP: the unspecified
// address (in force from c=) and port 9, with ICE attributes or a DTLS transport to say so (RFC
// 8840 section 4.2, RFC 8839 section 4.3.1; rtpengine tells the two apart the same way). The
// stream is live; its addresses are in candidates, or come later. Without those signs, c=
// 0.0.0.0 is the RFC 2543 hold it always was.
func isPlaceholder(raw []byte, m *sdpMedia, c *connField, sessICE bool) bool {
	if m.portNum != 9 || !c.ok || !c.ip.IsValid() || !c.ip.IsUnspecified() {
		return false
	}
	proto := raw[m.proto.start:m.proto.end]
	return m.ice || sessICE || hasPrefixFold(proto, "UDP/TLS/") || hasPrefixFold(proto, "UDP/DTLS/")
}
