package rewrite

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Edit is one change the rewriter made: the bytes Start:End of the input message (Old) were
// replaced by New. An insertion has Start == End; a removal has an empty New. Applying the edits
// of a [Result] to the input gives its Out; undoing them gives the input back.
type Edit struct {
	Field      Field // the address field edited; FieldNone for Content-Length, ports, removed lines
	What       string
	Start, End int
	Old, New   []byte
}

// Result is what [Rewrite] produced. Its slices are reused by the next Rewrite into the same
// Result; a caller that keeps them must copy.
type Result struct {
	// Out is the rewritten message.
	Out []byte
	// Streams are the media streams the message's SDP described, in order.
	Streams []Stream
	// Edits are the changes from the input to Out, in order of position.
	Edits []Edit

	pending []pendingEdit
	arena   []byte
	media   []sdpMedia
	parts   []sdpPart
	frags   []sdpFrag
	strip   []span
	rtpmaps []RTPMap // of every media section, in order (sdpMedia.rtpmaps indexes it)
}

type pendingEdit struct {
	field      Field
	what       string
	start, end int
	new        span // in arena
}

// Rewrite translates the message m, which came from side from, writing the result into res.
// Every address literal in the Request-URI, Via (sent-by, received/rport, maddr), Contact,
// Record-Route, Route and Path is passed to tr.Translate, every relayed SDP stream to tr.Media,
// and the answers are spliced into the original bytes; ICE attributes are removed from SDP (see
// iceAttribute), also from trickle-ICE fragments (see planFrag), and Content-Length is
// recomputed. Nothing else changes.
//
// The SDP is checked before the translator is asked anything, so a malformed body makes no
// binding. An error from the translator is returned wrapped, with no output; the caller releases
// whatever the translator allocated for this message.
func Rewrite(res *Result, m *Message, from Side, tr Translator) error {
	res.reset()
	if from != Inside && from != Outside {
		return fmt.Errorf("rewrite: invalid side %d", from)
	}
	if !m.parsed {
		return errors.New("rewrite: message was not parsed")
	}
	if err := res.planBody(m); err != nil {
		return err
	}
	w := rewriter{res: res, raw: m.raw, from: from, tr: tr, request: m.request}
	if err := w.headers(m); err != nil {
		return err
	}
	if err := w.sdp(); err != nil {
		return err
	}
	w.contentLength(m)
	res.build(m.raw)
	return nil
}

// RTPMap returns the a=rtpmap lines that parse (payload type, encoding, clock rate) of the
// SDP section of Streams[i], in order. They belong to r: copy them to keep them past the next
// Rewrite.
func (r *Result) RTPMap(i int) []RTPMap {
	for _, m := range r.media {
		if m.stream == i {
			return r.rtpmaps[m.rtpmaps.start:m.rtpmaps.end:m.rtpmaps.end]
		}
	}
	return nil
}

func (r *Result) reset() {
	r.Out = r.Out[:0]
	r.Streams = r.Streams[:0]
	r.Edits = r.Edits[:0]
	r.pending = r.pending[:0]
	r.arena = r.arena[:0]
	r.media = r.media[:0]
	r.parts = r.parts[:0]
	r.frags = r.frags[:0]
	r.strip = r.strip[:0]
	r.rtpmaps = r.rtpmaps[:0]
}

// planBody finds the SDP bodies of m (the body itself or multipart parts) and plans them.
func (r *Result) planBody(m *Message) error {
	if m.body.len() == 0 {
		return nil
	}
	var ct []byte
	if m.ctHeader >= 0 {
		h := m.hdrs[m.ctHeader]
		ct = m.raw[h.value.start:h.value.end]
	}
	encoded := false
	if m.ceHeader >= 0 {
		h := m.hdrs[m.ceHeader]
		encoded = !equalFold(m.raw[h.value.start:h.value.end], "identity")
	}
	return r.planEntity(m.raw, ct, m.body, encoded, span{}, 0)
}

// maxMultipartDepth bounds nested multipart bodies.
const maxMultipartDepth = 4

func (r *Result) planEntity(raw, ct []byte, body span, encoded bool, lenHdr span, depth int) error {
	mt := mediaType(ct)
	switch {
	case equalFold(mt, "application/sdp") || (ct == nil && bytes.HasPrefix(raw[body.start:body.end], []byte("v=0"))):
		if encoded {
			return &Error{Kind: ErrUnsupported, Where: "body", Offset: body.start, Reason: "SDP with a Content-Encoding cannot be translated"}
		}
		return r.planSDP(raw, body, len(r.parts), lenHdr)
	case equalFold(mt, "application/trickle-ice-sdpfrag"):
		if encoded {
			return nil
		}
		return r.planFrag(raw, body, lenHdr)
	case hasPrefixFold(mt, "multipart/"):
		if encoded {
			return nil
		}
		if depth >= maxMultipartDepth {
			return malformed("body", body.start, "multipart nested too deep")
		}
		boundary := contentTypeParam(ct, "boundary")
		if len(boundary) == 0 {
			return malformed("Content-Type", body.start, "multipart without a boundary")
		}
		return eachPart(raw, body, boundary, func(hdrs, content span) error {
			pct, plen, penc := partHeaders(raw, hdrs)
			return r.planEntity(raw, pct, content, penc, plen, depth+1)
		})
	}
	return nil
}

// mediaType returns the type/subtype of a Content-Type value, without parameters.
func mediaType(ct []byte) []byte {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return trimRightLWS(trimLeftLWS(ct))
}

// contentTypeParam returns a Content-Type parameter's value, unquoted.
func contentTypeParam(ct []byte, name string) []byte {
	i := bytes.IndexByte(ct, ';')
	if i < 0 {
		return nil
	}
	v := paramValue(ct, span{i, len(ct)}, name)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return v
}

// eachPart calls fn with the header block and content of every part of the multipart body at
// b. The line break before a delimiter belongs to the delimiter (RFC 2046).
func eachPart(raw []byte, b span, boundary []byte, fn func(hdrs, content span) error) error {
	var delim [80]byte
	if len(boundary) > 70 {
		return malformed("Content-Type", b.start, "multipart boundary longer than 70 characters")
	}
	d := append(append(delim[:0], '-', '-'), boundary...)
	// Find the first delimiter: at the start of the body or after a line break.
	pos := -1
	for i := b.start; i+len(d) <= b.end; {
		j := bytes.Index(raw[i:b.end], d)
		if j < 0 {
			break
		}
		at := i + j
		if at == b.start || raw[at-1] == '\n' {
			pos = at
			break
		}
		i = at + 1
	}
	if pos < 0 {
		return malformed("body", b.start, "multipart body without its boundary")
	}
	for {
		after := pos + len(d)
		if after+2 <= b.end && raw[after] == '-' && raw[after+1] == '-' {
			return nil // close delimiter
		}
		nl := bytes.IndexByte(raw[after:b.end], '\n')
		if nl < 0 {
			return malformed("body", after, "multipart delimiter line not terminated")
		}
		partStart := after + nl + 1
		next := -1
		for i := partStart; i < b.end; {
			j := bytes.Index(raw[i:b.end], d)
			if j < 0 {
				break
			}
			at := i + j
			if raw[at-1] == '\n' {
				next = at
				break
			}
			i = at + 1
		}
		if next < 0 {
			return malformed("body", partStart, "multipart body without a close delimiter")
		}
		partEnd := next - 1 // before LF
		if partEnd > partStart && raw[partEnd-1] == '\r' {
			partEnd--
		}
		if partEnd < partStart {
			partEnd = partStart
		}
		// Part headers end at the first empty line; a part may have none.
		hdrEnd, content := partStart, partStart
		if !(partStart < partEnd && (raw[partStart] == '\r' || raw[partStart] == '\n')) {
			k := bytes.Index(raw[partStart:partEnd], []byte("\n\r\n"))
			k2 := bytes.Index(raw[partStart:partEnd], []byte("\n\n"))
			switch {
			case k >= 0 && (k2 < 0 || k < k2):
				hdrEnd, content = partStart+k+1, partStart+k+3
			case k2 >= 0:
				hdrEnd, content = partStart+k2+1, partStart+k2+2
			default:
				return malformed("body", partStart, "multipart part without an empty line after its headers")
			}
		} else {
			content = partStart + 1
			if raw[partStart] == '\r' {
				content++
			}
		}
		if content > partEnd {
			content = partEnd
		}
		if err := fn(span{partStart, hdrEnd}, span{content, partEnd}); err != nil {
			return err
		}
		pos = next
	}
}

// partHeaders reads Content-Type, Content-Length and Content-Encoding of a multipart part.
func partHeaders(raw []byte, h span) (ct []byte, clen span, encoded bool) {
	for pos := h.start; pos < h.end; {
		nl := bytes.IndexByte(raw[pos:h.end], '\n')
		end := h.end
		if nl >= 0 {
			end = pos + nl + 1
		}
		line := trimEOL(raw[pos:end])
		if c := bytes.IndexByte(line, ':'); c > 0 {
			name := trimRightLWS(line[:c])
			vs := pos + c + 1
			v := trimRightLWS(trimLeftLWS(line[c+1:]))
			vs += len(line[c+1:]) - len(trimLeftLWS(line[c+1:]))
			switch kindOf(name) {
			case hContentType:
				ct = v
			case hContentLength:
				clen = span{vs, vs + len(v)}
			case hContentEncoding:
				encoded = !equalFold(v, "identity")
			}
		}
		pos = end
	}
	return ct, clen, encoded
}

// rewriter carries one Rewrite call.
type rewriter struct {
	res  *Result
	raw  []byte
	from Side
	tr   Translator
	// request: the message is a request; vias counts the via-parms seen so far.
	request bool
	vias    int
}

func (w *rewriter) edit(field Field, what string, s span, fill func(dst []byte) []byte) {
	a := len(w.res.arena)
	w.res.arena = fill(w.res.arena)
	w.res.pending = append(w.res.pending, pendingEdit{field: field, what: what, start: s.start, end: s.end, new: span{a, len(w.res.arena)}})
}

func (w *rewriter) headers(m *Message) error {
	if m.request {
		u, err := parseURI(w.raw, m.ruri, "Request-URI")
		if err != nil {
			return err
		}
		if _, err := w.uri(FieldRequestURI, &u, span{}); err != nil {
			return err
		}
	}
	for _, h := range m.hdrs {
		var field Field
		switch h.kind {
		case hVia:
			if err := eachVia(w.raw, h.value, w.via); err != nil {
				return err
			}
			continue
		case hContact:
			field = FieldContact
		case hRecordRoute:
			field = FieldRecordRoute
		case hRoute:
			field = FieldRoute
		case hPath:
			field = FieldPath
		default:
			continue
		}
		err := eachNameAddr(w.raw, h.value, h.kind, func(na nameAddr) error {
			if na.star {
				return nil
			}
			u, err := parseURI(w.raw, na.uri, field.String())
			if err != nil {
				return err
			}
			if na.angled {
				_, err := w.uri(field, &u, span{})
				return err
			}
			// An addr-spec without angle brackets: its parameters are header parameters (RFC 3261
			// section 20), but a UA that writes ;transport= there means the URI's. A changed
			// transport goes into the URI, which then needs its brackets, and the loose one goes.
			loose, value, _ := findParam(w.raw, na.params, "transport")
			changed, err := w.uri(field, &u, value)
			if err != nil || !changed {
				return err
			}
			w.edit(field, "angle bracket", span{na.uri.start, na.uri.start}, func(dst []byte) []byte { return append(dst, '<') })
			w.edit(field, "angle bracket", span{na.uri.end, na.uri.end}, func(dst []byte) []byte { return append(dst, '>') })
			if loose.len() > 0 {
				w.edit(field, "transport", loose, func(dst []byte) []byte { return dst })
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// uri translates the host and port of a sip: or sips: URI, and its transport when the
// translator converts it; it reports whether it changed the transport. loose is the value of a
// transport header parameter after a URI without angle brackets, read as the URI's.
func (w *rewriter) uri(field Field, u *uriInfo, loose span) (bool, error) {
	if !u.sip || !u.hp.isIP() {
		return false, nil
	}
	transport := ""
	switch {
	case u.transport.len() > 0:
		transport = transportName(w.raw[u.transport.start:u.transport.end])
	case u.secure:
		transport = "tls"
	case loose.len() > 0:
		transport = transportName(w.raw[loose.start:loose.end])
	}
	a, to, changed, err := w.hostPort(field, transport, &u.hp)
	if err != nil || !changed {
		return false, err
	}
	tt, ok := w.tr.(TransportTranslator)
	if !ok {
		return false, nil
	}
	want := tt.TranslateTransport(a, to)
	if want == "" || want == transport || (transport == "" && want == "udp") {
		return false, nil
	}
	// sips: means TLS all the way; any other transport makes it sip:.
	if u.secure && want != "tls" {
		w.edit(field, "scheme", u.scheme, func(dst []byte) []byte { return append(dst, "sip"...) })
	}
	if u.transport.len() > 0 {
		w.edit(field, "transport", u.transport, func(dst []byte) []byte { return append(dst, want...) })
	} else if !(u.secure && want == "tls") {
		w.edit(field, "transport", span{u.hpEnd, u.hpEnd}, func(dst []byte) []byte {
			return append(append(dst, ";transport="...), want...)
		})
	}
	return true, nil
}

// defaultPort is the port a SIP URI or Via without one means.
func defaultPort(transport string) uint16 {
	if transport == "tls" || transport == "wss" || transport == "tls-sctp" {
		return 5061
	}
	return 5060
}

// hostPort translates a host and port; it returns what it asked and got, and whether the
// address changed.
func (w *rewriter) hostPort(field Field, transport string, hp *hostPort) (Addr, netip.AddrPort, bool, error) {
	a := Addr{Field: field, From: w.from, Transport: transport, Lower: field == FieldVia && w.vias > 1}
	port := hp.portNum
	if hp.port.len() == 0 {
		port, a.PortImplicit = defaultPort(transport), true
	}
	a.AddrPort = netip.AddrPortFrom(hp.addr, port)
	whole := hp.host
	if hp.bracket {
		whole = span{whole.start - 1, whole.end + 1}
	}
	if hp.port.len() > 0 {
		whole.end = hp.port.end
	}
	a.Written = w.raw[whole.start:whole.end]
	to, ok, err := w.tr.Translate(a)
	if err != nil {
		return a, to, false, fmt.Errorf("translate %s %s: %w", field, a.AddrPort, err)
	}
	if !ok || to == a.AddrPort {
		return a, to, false, nil
	}
	if wt, isWT := w.tr.(WrittenTranslator); isWT {
		if text := wt.TranslateWritten(a, to); text != nil {
			w.edit(field, "host and port as written", whole, func(dst []byte) []byte { return append(dst, text...) })
			return a, to, true, nil
		}
	}
	if to.Addr() != hp.addr {
		bracket := to.Addr().Is6()
		hs := hp.host
		if hp.bracket {
			hs = span{hs.start - 1, hs.end + 1}
		}
		w.edit(field, "host", hs, func(dst []byte) []byte {
			if bracket {
				dst = append(dst, '[')
			}
			dst = to.Addr().AppendTo(dst)
			if bracket {
				dst = append(dst, ']')
			}
			return dst
		})
	}
	switch {
	case to.Port() == port:
	case hp.port.len() > 0:
		w.edit(field, "port", hp.port, func(dst []byte) []byte {
			return strconv.AppendUint(dst, uint64(to.Port()), 10)
		})
	default:
		end := hp.host.end
		if hp.bracket {
			end++
		}
		w.edit(field, "port", span{end, end}, func(dst []byte) []byte {
			return strconv.AppendUint(append(dst, ':'), uint64(to.Port()), 10)
		})
	}
	return a, to, true, nil
}

func (w *rewriter) via(p viaParm) error {
	w.vias++
	if vr, ok := w.tr.(ViaRestorer); ok && !w.request {
		if orig := vr.RestoreVia(w.vias-1, w.raw[p.whole.start:p.whole.end]); orig != nil {
			w.edit(FieldVia, "restored", p.whole, func(dst []byte) []byte { return append(dst, orig...) })
			return nil
		}
	}
	transport := transportName(w.raw[p.transport.start:p.transport.end])
	if p.sentBy.isIP() {
		a, to, changed, err := w.hostPort(FieldVia, transport, &p.sentBy)
		if err != nil {
			return err
		}
		if tt, ok := w.tr.(TransportTranslator); ok && changed {
			if want := tt.TranslateTransport(a, to); want != "" && want != transport {
				w.edit(FieldVia, "transport", p.transport, func(dst []byte) []byte {
					for i := range len(want) {
						c := want[i]
						if c >= 'a' && c <= 'z' {
							c -= 'a' - 'A'
						}
						dst = append(dst, c)
					}
					return dst
				})
			}
		}
	}
	if p.received.len() > 0 {
		if err := w.received(transport, &p); err != nil {
			return err
		}
	}
	if p.maddr.len() > 0 {
		ms := p.maddr
		b := w.raw[ms.start:ms.end]
		if len(b) > 2 && b[0] == '[' && b[len(b)-1] == ']' {
			ms = span{ms.start + 1, ms.end - 1}
		}
		if ip, ok := parseIP(w.raw[ms.start:ms.end]); ok {
			if err := w.bareAddr(FieldViaMaddr, transport, ms, ip); err != nil {
				return err
			}
		}
	}
	return nil
}

// received translates "received" and, when it carries a value, "rport": together they are the
// address a response is sent to.
func (w *rewriter) received(transport string, p *viaParm) error {
	rs := p.received
	b := w.raw[rs.start:rs.end]
	if len(b) > 2 && b[0] == '[' && b[len(b)-1] == ']' {
		rs = span{rs.start + 1, rs.end - 1}
	}
	ip, ok := parseIP(w.raw[rs.start:rs.end])
	if !ok {
		return nil
	}
	a := Addr{Field: FieldViaReceived, From: w.from, Transport: transport}
	var port uint16
	switch {
	case p.rport.len() > 0:
		n, _ := parseUint(w.raw[p.rport.start:p.rport.end], 65535)
		port = uint16(n)
	case p.sentBy.port.len() > 0:
		port, a.PortImplicit = p.sentBy.portNum, true
	default:
		port, a.PortImplicit = defaultPort(transport), true
	}
	a.AddrPort = netip.AddrPortFrom(ip, port)
	to, ok, err := w.tr.Translate(a)
	if err != nil {
		return fmt.Errorf("translate %s %s: %w", a.Field, a.AddrPort, err)
	}
	if !ok || to == a.AddrPort {
		return nil
	}
	if to.Addr() != ip {
		// Brackets as the sender wrote them (RFC 5118 section 4.5 sees both), but never around
		// an IPv4 address.
		bracketed := rs != p.received
		if bracketed && to.Addr().Is4() {
			rs = p.received
		}
		w.edit(FieldViaReceived, "address", rs, to.Addr().AppendTo)
	}
	if p.rport.len() > 0 && to.Port() != port {
		w.edit(FieldViaReceived, "rport", p.rport, func(dst []byte) []byte {
			return strconv.AppendUint(dst, uint64(to.Port()), 10)
		})
	}
	return nil
}

// bareAddr translates an address that stands without a port.
func (w *rewriter) bareAddr(field Field, transport string, s span, ip netip.Addr) error {
	a := Addr{Field: field, From: w.from, Transport: transport, AddrPort: netip.AddrPortFrom(ip, 0)}
	to, ok, err := w.tr.Translate(a)
	if err != nil {
		return fmt.Errorf("translate %s %s: %w", field, ip, err)
	}
	if ok && to.Addr() != ip {
		w.edit(field, "address", s, to.Addr().AppendTo)
	}
	return nil
}

// sdp translates the planned SDP bodies.
func (w *rewriter) sdp() error {
	res := w.res
	for i := range res.media {
		m := &res.media[i]
		p := &res.parts[m.part]
		c := &p.sessC
		if m.c.ok {
			c = &m.c
		}
		s := Stream{
			Part:      m.part,
			Index:     m.index,
			Media:     intern(w.raw[m.media.start:m.media.end]),
			Proto:     intern(w.raw[m.proto.start:m.proto.end]),
			Mux:       m.mux,
			Direction: p.sessDir,
		}
		if m.dirSet {
			s.Direction = m.dir
		}
		placeholder := isPlaceholder(w.raw, m, c, p.sessICE)
		switch {
		case placeholder:
			s.Placeholder = true
			s.RTP, s.RTCP = w.placeholderPeer(m, c.ip)
		case c.ip.IsValid():
			s.RTP = netip.AddrPortFrom(c.ip, m.portNum)
			s.RTCP = netip.AddrPortFrom(c.ip, m.portNum+1)
			if m.rtcpPort.len() > 0 {
				s.RTCP = netip.AddrPortFrom(c.ip, m.rtcpPortNum)
				if m.rtcp.ip.IsValid() {
					s.RTCP = netip.AddrPortFrom(m.rtcp.ip, m.rtcpPortNum)
				}
			}
			if m.mux {
				s.RTCP = s.RTP
			}
		}
		switch {
		case m.portNum == 0:
			s.Disposition = Rejected
		case isTCPProto(w.raw[m.proto.start:m.proto.end]):
			s.Disposition = NotRelayed
		case s.Direction == Inactive:
			s.Disposition = Held
		case placeholder:
			s.Disposition = Relayed
		case c.ok && c.ip.IsValid() && c.ip.IsUnspecified():
			s.Disposition = Held
		case !c.usable():
			s.Disposition = NotRelayed
		default:
			s.Disposition = Relayed
		}
		m.stream = len(res.Streams)
		res.Streams = append(res.Streams, s)
	}
	// Relayed streams first, so that a session c= shared with them takes the relay address.
	for i := range res.media {
		m := &res.media[i]
		s := &res.Streams[m.stream]
		if s.Disposition != Relayed {
			continue
		}
		b, err := w.tr.Media(w.from, s)
		if err != nil {
			return fmt.Errorf("translate %s stream %d: %w", s.Media, s.Index, err)
		}
		if !b.RTP.IsValid() {
			return fmt.Errorf("translate %s stream %d: translator gave no address", s.Media, s.Index)
		}
		s.Binding = b
		w.mediaEdits(m, s)
	}
	for pi := range res.parts {
		p := &res.parts[pi]
		if err := w.sessionAddrs(pi, p); err != nil {
			return err
		}
	}
	for i := range res.media {
		m := &res.media[i]
		s := &res.Streams[m.stream]
		if s.Disposition == Relayed {
			continue
		}
		if m.c.named() {
			if err := w.sdpConn(FieldSDPConnection, &m.c); err != nil {
				return err
			}
		}
		if m.rtcp.named() {
			if err := w.sdpConn(FieldSDPConnection, &m.rtcp); err != nil {
				return err
			}
		}
	}
	for _, s := range res.strip {
		w.edit(FieldNone, "ICE attribute removed", s, func(dst []byte) []byte { return dst })
	}
	return nil
}

// placeholderPeer returns where the sender of a placeholder stream (see isPlaceholder) wants
// its RTP and RTCP: the address of its default candidate, or the unspecified address (of the
// family of c=) and port 0 when no candidate names one, so that the peer is learned from its
// first packets.
//
// RFC 8445 section 5.1.4 ranks default candidates relayed, then server reflexive, then host.
// Relayed candidates are passed over: a TURN server forwards only from peers the client gave a
// permission, and sipcar, which removes ICE, is given none. Between the other two the side decides:
// a host candidate from inside names an address on sipcar's inside network, which sipcar reaches
// directly, while a host candidate from outside is as a rule behind the sender's own NAT, which
// only its reflexive address crosses. Within a kind, the candidate of highest priority, which is
// the one the sender's own agent prefers.
func (w *rewriter) placeholderPeer(m *sdpMedia, unspecified netip.Addr) (rtp, rtcp netip.AddrPort) {
	c, other := m.srflx, m.host
	if w.from == Inside {
		c, other = m.host, m.srflx
	}
	if !c.ok {
		c = other
	}
	if !c.ok {
		none := netip.AddrPortFrom(unspecified, 0)
		return none, none
	}
	rtp = c.addr
	if m.mux {
		return rtp, rtp
	}
	// RTCP is component 2 of the same foundation (RFC 8445 section 5.1.1.3), else RTP + 1.
	foundation := w.raw[c.foundation.start:c.foundation.end]
	for _, l := range w.res.strip {
		if l.start < m.sectionStart || l.start >= m.sectionEnd {
			continue
		}
		content := trimEOL(w.raw[l.start:l.end])
		eq := bytes.IndexByte(content, '=')
		if eq < 0 {
			continue
		}
		name, value := attribute(w.raw, span{l.start + eq + 1, l.start + len(content)})
		if !equalFold(w.raw[name.start:name.end], "candidate") {
			continue
		}
		if r := parseCandidate(w.raw, value); r.ok && r.udp && r.component == 2 && bytes.Equal(w.raw[r.foundation.start:r.foundation.end], foundation) {
			return rtp, r.addr
		}
	}
	if rtp.Port() == 65535 {
		return rtp, rtp
	}
	return rtp, netip.AddrPortFrom(rtp.Addr(), rtp.Port()+1)
}

// mediaEdits writes a relayed stream's binding into its m=, c= and a=rtcp lines.
func (w *rewriter) mediaEdits(m *sdpMedia, s *Stream) {
	b := s.Binding
	if b.RTP.Port() != m.portNum {
		w.edit(FieldNone, "SDP m= port", m.port, func(dst []byte) []byte {
			return strconv.AppendUint(dst, uint64(b.RTP.Port()), 10)
		})
	}
	if m.c.ok {
		w.connEdit(FieldSDPConnection, &m.c, b.RTP.Addr())
	}
	if m.rtcpPort.len() > 0 {
		port := b.RTCPPort
		if m.mux && m.rtcpPortNum == m.portNum {
			port = b.RTP.Port()
		}
		if port != m.rtcpPortNum {
			w.edit(FieldNone, "SDP a=rtcp port", m.rtcpPort, func(dst []byte) []byte {
				return strconv.AppendUint(dst, uint64(port), 10)
			})
		}
		if m.rtcp.ok && m.rtcp.ip.IsValid() {
			w.connEdit(FieldSDPConnection, &m.rtcp, b.RTP.Addr())
		}
	} else if !m.mux && b.RTCPPort != b.RTP.Port()+1 {
		// The peer would assume RTP + 1 (RFC 3605): say where RTCP goes.
		p := &w.res.parts[m.part]
		w.edit(FieldNone, "SDP a=rtcp added", span{m.sectionEnd, m.sectionEnd}, func(dst []byte) []byte {
			if m.sectionEnd > 0 && w.raw[m.sectionEnd-1] != '\n' {
				dst = appendEOL(dst, p.crlf)
			}
			dst = strconv.AppendUint(append(dst, "a=rtcp:"...), uint64(b.RTCPPort), 10)
			return appendEOL(dst, p.crlf)
		})
	}
}

func appendEOL(dst []byte, crlf bool) []byte {
	if crlf {
		return append(dst, '\r', '\n')
	}
	return append(dst, '\n')
}

// sessionAddrs translates a part's o= and session-level c=.
func (w *rewriter) sessionAddrs(pi int, p *sdpPart) error {
	if p.origin.named() {
		if err := w.sdpConn(FieldSDPOrigin, &p.origin); err != nil {
			return err
		}
	}
	if !p.sessC.ok {
		return nil
	}
	// The session c= is in force for every stream without its own; if any of them is relayed,
	// it names the first one's relay address, and a stream relayed at another (a mixed-family
	// offer's answer, each stream in its offer's family) gets a c= line of its own.
	var relay netip.Addr
	for i := range w.res.media {
		m := &w.res.media[i]
		s := &w.res.Streams[m.stream]
		if m.part != pi || m.c.ok || s.Disposition != Relayed {
			continue
		}
		a := s.Binding.RTP.Addr()
		switch {
		case !relay.IsValid():
			relay = a
		case a != relay:
			w.addMediaConn(p, m, a)
		}
	}
	if relay.IsValid() {
		w.connEdit(FieldSDPConnection, &p.sessC, relay)
		return nil
	}
	if p.sessC.named() {
		return w.sdpConn(FieldSDPConnection, &p.sessC)
	}
	return nil
}

// addMediaConn writes a media-level c= line naming ip right after m's m= line.
func (w *rewriter) addMediaConn(p *sdpPart, m *sdpMedia, ip netip.Addr) {
	at := m.sectionEnd
	if nl := bytes.IndexByte(w.raw[m.sectionStart:m.sectionEnd], '\n'); nl >= 0 {
		at = m.sectionStart + nl + 1
	}
	w.edit(FieldSDPConnection, "SDP c= added", span{at, at}, func(dst []byte) []byte {
		if at > 0 && w.raw[at-1] != '\n' {
			dst = appendEOL(dst, p.crlf)
		}
		dst = append(dst, "c=IN IP4 "...)
		if ip.Is6() {
			dst[len(dst)-2] = '6'
		}
		return appendEOL(ip.AppendTo(dst), p.crlf)
	})
}

// sdpConn asks the translator for an SDP address that is not a relayed stream's.
func (w *rewriter) sdpConn(field Field, c *connField) error {
	a := Addr{Field: field, From: w.from, AddrPort: netip.AddrPortFrom(c.ip, 0)}
	to, ok, err := w.tr.Translate(a)
	if err != nil {
		return fmt.Errorf("translate %s %s: %w", field, c.ip, err)
	}
	if ok {
		w.connEdit(field, c, to.Addr())
	}
	return nil
}

// connEdit writes ip into an SDP address field, and its address type when the family changes.
func (w *rewriter) connEdit(field Field, c *connField, ip netip.Addr) {
	if ip == c.ip {
		return
	}
	want := "IP4"
	if ip.Is6() {
		want = "IP6"
	}
	if !equalFold(w.raw[c.addrtype.start:c.addrtype.end], want) {
		w.edit(field, "SDP address type", c.addrtype, func(dst []byte) []byte { return append(dst, want...) })
	}
	w.edit(field, "SDP address", c.addr, ip.AppendTo)
}

// contentLength sets the Content-Length of the message (and of multipart parts that have one)
// to the length of the rewritten body.
func (w *rewriter) contentLength(m *Message) {
	res := w.res
	slices.SortStableFunc(res.pending, byPosition)
	growth := func(s span) int {
		n := 0
		for _, e := range res.pending {
			if e.start >= s.start && e.end <= s.end {
				n += e.new.len() - (e.end - e.start)
			}
		}
		return n
	}
	partLength := func(body, lenHdr span) {
		if lenHdr.len() > 0 {
			if d := growth(body); d != 0 {
				n := body.len() + d
				w.edit(FieldNone, "part Content-Length", lenHdr, func(dst []byte) []byte {
					return strconv.AppendUint(dst, uint64(n), 10)
				})
			}
		}
	}
	for _, p := range res.parts {
		partLength(p.body, p.lenHdr)
	}
	for _, f := range res.frags {
		partLength(f.body, f.lenHdr)
	}
	d := growth(m.body)
	n := m.body.len() + d
	switch {
	case m.clHeader >= 0:
		h := m.hdrs[m.clHeader]
		if old, _ := parseUint(m.raw[h.value.start:h.value.end], 1<<31-1); int(old) != n {
			w.edit(FieldNone, "Content-Length", h.value, func(dst []byte) []byte {
				return strconv.AppendUint(dst, uint64(n), 10)
			})
		}
	case d != 0:
		w.edit(FieldNone, "Content-Length added", span{m.blank.start, m.blank.start}, func(dst []byte) []byte {
			// End the new line as the empty line after it ends: mixed line endings exist.
			return appendEOL(strconv.AppendUint(append(dst, "Content-Length: "...), uint64(n), 10), m.blank.len() == 2)
		})
	}
	slices.SortStableFunc(res.pending, byPosition)
}

// byPosition orders edits by where they start; at one position an insertion goes before a
// replacement, and insertions keep the order they were made in (a port, then a parameter, then
// a closing bracket).
func byPosition(a, b pendingEdit) int {
	if a.start != b.start {
		return a.start - b.start
	}
	return a.end - b.end
}

// build applies the pending edits to raw.
func (r *Result) build(raw []byte) {
	last := 0
	for _, e := range r.pending {
		r.Out = append(r.Out, raw[last:e.start]...)
		r.Out = append(r.Out, r.arena[e.new.start:e.new.end]...)
		last = e.end
	}
	r.Out = append(r.Out, raw[last:]...)
	for _, e := range r.pending {
		r.Edits = append(r.Edits, Edit{
			Field: e.field,
			What:  e.what,
			Start: e.start,
			End:   e.end,
			Old:   raw[e.start:e.end],
			New:   r.arena[e.new.start:e.new.end:e.new.end],
		})
	}
}

// intern returns common SDP media types and protocols without allocating.
func intern(b []byte) string {
	for _, s := range [...]string{"audio", "video", "image", "application", "message", "text",
		"RTP/AVP", "RTP/SAVP", "RTP/AVPF", "RTP/SAVPF", "UDP/TLS/RTP/SAVP", "UDP/TLS/RTP/SAVPF", "UDP/DTLS/SCTP", "udptl", "UDPTL", "TCP/MSRP"} {
		if string(b) == s {
			return s
		}
	}
	return string(b)
}
