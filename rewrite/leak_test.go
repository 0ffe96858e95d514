package rewrite

import (
	"fmt"
	"net/netip"
	"slices"
)

// insideLeaks returns a description of the first inside address found in a field that must
// never carry one out (Request-URI, Via sent-by/received/maddr, Contact, Record-Route, Route,
// Path, SDP o=/c=/a=rtcp), or "" when there is none or the message does not parse.
func insideLeaks(msg []byte, nets []netip.Prefix) string {
	inside := func(a netip.Addr) bool {
		return slices.ContainsFunc(nets, func(p netip.Prefix) bool { return p.Contains(a.Unmap()) })
	}
	var m Message
	if Parse(msg, &m) != nil {
		return ""
	}
	raw := m.raw
	leak := ""
	uri := func(where string, s span) {
		u, err := parseURI(raw, s, where)
		if err == nil && u.sip && u.hp.isIP() && inside(u.hp.addr) && leak == "" {
			leak = fmt.Sprintf("%s %s", where, raw[s.start:s.end])
		}
	}
	ip := func(where string, b []byte) {
		if len(b) > 2 && b[0] == '[' {
			b = b[1 : len(b)-1]
		}
		if a, ok := parseIP(b); ok && inside(a) && leak == "" {
			leak = fmt.Sprintf("%s %s", where, b)
		}
	}
	if m.request {
		uri("Request-URI", m.ruri)
	}
	for _, h := range m.hdrs {
		switch h.kind {
		case hVia:
			_ = eachVia(raw, h.value, func(p viaParm) error {
				if p.sentBy.isIP() && inside(p.sentBy.addr) && leak == "" {
					leak = "Via " + string(raw[p.sentBy.host.start:p.sentBy.host.end])
				}
				ip("Via received", raw[p.received.start:p.received.end])
				ip("Via maddr", raw[p.maddr.start:p.maddr.end])
				return nil
			})
		case hContact, hRecordRoute, hRoute, hPath:
			_ = eachNameAddr(raw, h.value, h.kind, func(na nameAddr) error {
				if !na.star {
					uri(headerName(h.kind), na.uri)
				}
				return nil
			})
		}
	}
	var r Result
	if r.planBody(&m) != nil {
		return leak
	}
	conn := func(where string, c *connField) {
		if c.ok && c.ip.IsValid() && inside(c.ip) && leak == "" {
			leak = fmt.Sprintf("%s %s", where, c.ip)
		}
	}
	for i := range r.parts {
		conn("SDP o=", &r.parts[i].origin)
		conn("SDP c=", &r.parts[i].sessC)
	}
	for i := range r.media {
		conn("SDP media c=", &r.media[i].c)
		conn("SDP a=rtcp", &r.media[i].rtcp)
	}
	return leak
}
