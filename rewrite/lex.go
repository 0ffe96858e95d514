package rewrite

import (
	"bytes"
	"net/netip"
	"unsafe"
)

// tokenChars marks the characters of an RFC 3261 token.
var tokenChars = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-.!%*_+`'~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChars[c] {
			return false
		}
	}
	return true
}

func isScheme(b []byte) bool {
	if len(b) == 0 || !isAlpha(b[0]) {
		return false
	}
	for _, c := range b[1:] {
		if !isAlpha(c) && !isDigit(c) && c != '+' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

func isAlpha(c byte) bool { return (c|0x20) >= 'a' && (c|0x20) <= 'z' }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// isLWS reports linear white space, including the line breaks of folded header lines.
func isLWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func trimLeftLWS(b []byte) []byte {
	for len(b) > 0 && isLWS(b[0]) {
		b = b[1:]
	}
	return b
}

func trimRightLWS(b []byte) []byte {
	for len(b) > 0 && isLWS(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func skipLWS(raw []byte, i, end int) int {
	for i < end && isLWS(raw[i]) {
		i++
	}
	return i
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if lower(b[i]) != lower(s[i]) {
			return false
		}
	}
	return true
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && equalFold(b[:len(prefix)], prefix)
}

// parseUint parses a decimal number (surrounded by optional LWS) no larger than max.
func parseUint(b []byte, max uint64) (uint64, bool) {
	b = trimRightLWS(trimLeftLWS(b))
	if len(b) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
		if n > max {
			return 0, false
		}
	}
	return n, true
}

// indexUnquoted returns the index of the first c in b outside quoted strings and angle
// brackets, or -1.
func indexUnquoted(b []byte, c byte) int {
	quoted, angle := false, false
	for i := 0; i < len(b); i++ {
		switch ch := b[i]; {
		case quoted:
			if ch == '\\' {
				i++
			} else if ch == '"' {
				quoted = false
			}
		case ch == '"':
			quoted = true
		case ch == '<':
			angle = true
		case ch == '>':
			angle = false
		case ch == c && !angle:
			return i
		}
	}
	return -1
}

// parseIP parses an IPv4 or IPv6 literal (no brackets, no zone) without allocating: netip
// allocates the error it returns, so what cannot be an address (a host name, an mDNS candidate,
// a masked "00.000.00.0") is turned away before it is asked.
func parseIP(b []byte) (netip.Addr, bool) {
	if len(b) == 0 || len(b) > 45 {
		return netip.Addr{}, false
	}
	if bytes.IndexByte(b, ':') < 0 {
		return parseIPv4(b)
	}
	for _, c := range b {
		if !isDigit(c) && (lower(c) < 'a' || lower(c) > 'f') && c != ':' && c != '.' {
			return netip.Addr{}, false
		}
	}
	// netip.ParseAddr keeps no reference to its argument (a zone, which we reject below, would
	// be copied), so reading the bytes as a string without a copy is safe here.
	a, err := netip.ParseAddr(unsafe.String(&b[0], len(b)))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a, true
}

// transportName returns the lower-case name of a SIP transport token, without allocating for
// the known ones.
func transportName(b []byte) string {
	for _, t := range [...]string{"udp", "tcp", "tls", "sctp", "ws", "wss", "tls-sctp"} {
		if equalFold(b, t) {
			return t
		}
	}
	s := make([]byte, len(b))
	for i, c := range b {
		s[i] = lower(c)
	}
	return string(s)
}

// parseIPv4 parses dotted decimal as netip does (four octets up to 255, no leading zeros).
func parseIPv4(b []byte) (netip.Addr, bool) {
	var a [4]byte
	n, digits, v := 0, 0, 0
	for i, c := range b {
		switch {
		case isDigit(c):
			if digits > 0 && v == 0 {
				return netip.Addr{}, false // leading zero
			}
			v = v*10 + int(c-'0')
			digits++
			if v > 255 {
				return netip.Addr{}, false
			}
		case c == '.' && digits > 0 && n < 3 && i < len(b)-1:
			a[n] = byte(v)
			n, digits, v = n+1, 0, 0
		default:
			return netip.Addr{}, false
		}
	}
	if n != 3 || digits == 0 {
		return netip.Addr{}, false
	}
	a[3] = byte(v)
	return netip.AddrFrom4(a), true
}
