package rewrite

import (
	"net/netip"
	"strconv"
)

// Readers of single header values, for the relay's routing decisions (RFC 3261 sections 16 and
// 18). They accept the values as Parse checked them and report ok false for host names, which
// sipcar does not resolve.

// ViaSentBy returns the sent-by of a Via value (its first via-parm), with the transport's
// default port when it has none.
func ViaSentBy(via []byte) (netip.AddrPort, bool) {
	var out netip.AddrPort
	first := true
	_ = eachVia(via, span{0, len(via)}, func(p viaParm) error {
		if first && p.sentBy.isIP() {
			out = netip.AddrPortFrom(p.sentBy.addr.Unmap(), portOr(p.sentBy, transportName(via[p.transport.start:p.transport.end])))
		}
		first = false
		return nil
	})
	return out, out.IsValid()
}

// ViaResponseAddr returns where a response goes by its top Via (RFC 3261 section 18.2.2, RFC
// 3581): received and rport when present, else sent-by.
func ViaResponseAddr(via []byte) (netip.AddrPort, bool) {
	var out netip.AddrPort
	first := true
	_ = eachVia(via, span{0, len(via)}, func(p viaParm) error {
		if !first {
			return nil
		}
		first = false
		transport := transportName(via[p.transport.start:p.transport.end])
		ip, port := p.sentBy.addr, portOr(p.sentBy, transport)
		if p.received.len() > 0 {
			b := via[p.received.start:p.received.end]
			if len(b) > 2 && b[0] == '[' {
				b = b[1 : len(b)-1]
			}
			if a, ok := parseIP(b); ok {
				ip = a
			}
		}
		if p.rport.len() > 0 {
			if n, ok := parseUint(via[p.rport.start:p.rport.end], 65535); ok && n > 0 {
				port = uint16(n)
			}
		}
		if ip.IsValid() {
			out = netip.AddrPortFrom(ip.Unmap(), port)
		}
		return nil
	})
	return out, out.IsValid()
}

// RouteTarget returns the address of the first URI of a Route value and whether it is a loose
// router (;lr).
func RouteTarget(route []byte) (a netip.AddrPort, lr bool, ok bool) {
	first := true
	_ = eachNameAddr(route, span{0, len(route)}, hRoute, func(na nameAddr) error {
		if !first {
			return nil
		}
		first = false
		a, ok = URIAddr(route[na.uri.start:na.uri.end])
		lr = paramValue(route, span{na.uri.start, na.uri.end}, "lr") != nil
		return nil
	})
	return a, lr, ok
}

// ContactAddr returns the address of the first URI of a Contact value, when its host is an IP
// literal.
func ContactAddr(contact []byte) (a netip.AddrPort, ok bool) {
	first := true
	_ = eachNameAddr(contact, span{0, len(contact)}, hContact, func(na nameAddr) error {
		if first {
			a, ok = URIAddr(contact[na.uri.start:na.uri.end])
		}
		first = false
		return nil
	})
	return a, ok
}

// URIAddr returns the host and port of a sip: or sips: URI whose host is an IP literal (the
// transport's default port when it names none).
func URIAddr(uri []byte) (netip.AddrPort, bool) {
	u, err := parseURI(uri, span{0, len(uri)}, "URI")
	if err != nil || !u.sip || !u.hp.isIP() {
		return netip.AddrPort{}, false
	}
	transport := ""
	if u.transport.len() > 0 {
		transport = transportName(uri[u.transport.start:u.transport.end])
	} else if u.secure {
		transport = "tls"
	}
	return netip.AddrPortFrom(u.hp.addr.Unmap(), portOr(u.hp, transport)), true
}

func portOr(hp hostPort, transport string) uint16 {
	if hp.port.len() > 0 {
		return hp.portNum
	}
	return defaultPort(transport)
}

// ContactExpires returns the largest expires parameter among the values of a Contact header.
func ContactExpires(contact []byte) (int, bool) {
	best, found := 0, false
	_ = eachNameAddr(contact, span{0, len(contact)}, hContact, func(na nameAddr) error {
		if v := paramValue(contact, na.params, "expires"); v != nil {
			if n, ok := parseUint(v, 1<<32-1); ok && (!found || int(n) > best) {
				best, found = int(n), true
			}
		}
		return nil
	})
	return best, found
}

// ViaParam returns the value of parameter name of the first via-parm of a Via value (nil when
// it has none; empty for a parameter without a value).
func ViaParam(via []byte, name string) []byte {
	if i := indexUnquoted(via, ','); i >= 0 {
		via = via[:i]
	}
	return paramValue(via, span{0, len(via)}, name)
}

// URIHost returns the host of a sip: or sips: URI when it is a name (not an IP literal), else "".
func URIHost(uri []byte) string {
	u, err := parseURI(uri, span{0, len(uri)}, "URI")
	if err != nil || !u.sip || u.hp.isIP() {
		return ""
	}
	return string(uri[u.hp.host.start:u.hp.host.end])
}

// ContactCount returns how many Contact values (name-addrs, or "*") the message's Contact headers
// hold together, as Parse counted them: a relay caps it before rewriting, which costs a binding
// per address.
func ContactCount(m *Message) int { return m.contacts }

// ViaNamesNoAddress reports whether the sent-by of a Via value's first via-parm is an
// IPv4address by RFC 3261's ABNF that names no address ("198.51.100.300", a masked
// "00.000.00.0"): text sipcar leaves alone elsewhere, but where a request's responses must go it
// is no address at all.
func ViaNamesNoAddress(via []byte) bool {
	masked, first := false, true
	_ = eachVia(via, span{0, len(via)}, func(p viaParm) error {
		if first {
			masked = !p.sentBy.isIP() && looksNumeric(via[p.sentBy.host.start:p.sentBy.host.end])
		}
		first = false
		return nil
	})
	return masked
}

// FirstViaParm returns the first via-parm of a Via value as written (sent-protocol, sent-by and
// parameters), or nil when the value does not parse.
func FirstViaParm(via []byte) []byte {
	var out []byte
	first := true
	err := eachVia(via, span{0, len(via)}, func(p viaParm) error {
		if first {
			out = via[p.whole.start:p.whole.end]
		}
		first = false
		return nil
	})
	if err != nil {
		return nil
	}
	return out
}

// ViaReceivedFrom appends to dst a via-parm with what the first hop that received its request
// from src adds (RFC 3261 section 18.2.1, RFC 3581): received when the sent-by is not src's
// address or rport asks for it, and rport's value when it has none. A received the via-parm
// already has is kept. IPv6 addresses in received are written without brackets, as RFC 3261's
// ABNF has them.
func ViaReceivedFrom(dst, parm []byte, src netip.AddrPort) []byte {
	var p viaParm
	found := false
	_ = eachVia(parm, span{0, len(parm)}, func(v viaParm) error {
		if !found {
			p, found = v, true
		}
		return nil
	})
	if !found {
		return append(dst, parm...)
	}
	fillPort := p.hasRport && p.rport.len() == 0
	addReceived := p.received.len() == 0 && (fillPort || !p.sentBy.isIP() || p.sentBy.addr.Unmap() != src.Addr().Unmap())
	at := p.whole.end
	if fillPort {
		at = p.rport.start
	}
	dst = append(dst, parm[:at]...)
	if fillPort {
		dst = strconv.AppendUint(append(dst, '='), uint64(src.Port()), 10)
	}
	dst = append(dst, parm[at:p.whole.end]...)
	if addReceived {
		dst = src.Addr().Unmap().AppendTo(append(dst, ";received="...))
	}
	return append(dst, parm[p.whole.end:]...)
}
