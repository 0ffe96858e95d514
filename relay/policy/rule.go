package policy

import (
	"encoding/binary"
	"net/netip"
	"strings"
)

// Rules is an ordered list of rules, as [Parse] and [Load] return it. It is immutable, and safe
// to share between goroutines and between [Policy] values.
type Rules struct {
	rules    []Rule
	matchers []matcher // rules[i].matcher
	index    *index    // nil for more than maxIndexedRules rules
}

// first returns the number (from 0) of the first rule that matches, or -1.
func (rs *Rules) first(req *Request, k *keys) int {
	if rs.index != nil {
		return rs.index.first(req, k)
	}
	return scan(rs.matchers, req, k)
}

// Len returns the number of rules.
func (rs *Rules) Len() int {
	if rs == nil {
		return 0
	}
	return len(rs.rules)
}

// At returns rule i, counting from 0 (the rule an operator calls "rule i+1").
func (rs *Rules) At(i int) *Rule { return &rs.rules[i] }

// String returns the rules as written (with spacing normalized), separated by "; ", which
// [Parse] reads back to the same rules.
func (rs *Rules) String() string {
	if rs == nil {
		return ""
	}
	var b strings.Builder
	for i := range rs.rules {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(rs.rules[i].text)
	}
	return b.String()
}

// MarshalText writes [Rules.String].
func (rs *Rules) MarshalText() ([]byte, error) { return []byte(rs.String()), nil }

// UnmarshalText parses text with [Parse], so that Rules can be a field of an environment
// configuration struct (SIPCAR_POLICY).
func (rs *Rules) UnmarshalText(text []byte) error {
	parsed, err := Parse(string(text))
	if err != nil {
		return err
	}
	*rs = *parsed
	return nil
}

// Rule is one rule of [Rules].
type Rule struct {
	text   string // as written, tokens separated by one space
	line   int    // where it starts in its text, from 1
	action Action
	silent bool

	matcher

	perSecond float64 // 0: no rate
	burst     int
}

// String returns the rule as written, with spacing normalized: the text that names it in
// displays, metrics and Warning headers, and by which a reload recognizes it.
func (r *Rule) String() string { return r.text }

// Line returns the line of its text the rule starts on, from 1.
func (r *Rule) Line() int { return r.line }

// Action returns what the rule does with the requests it matches.
func (r *Rule) Action() Action { return r.action }

// Silent reports whether the requests the rule refuses are dropped without an answer.
func (r *Rule) Silent() bool { return r.silent }

// Rate returns the rule's rate in new dialogs or registrations per second per source, and its
// burst; 0, 0 when it has none.
func (r *Rule) Rate() (perSecond float64, burst int) { return r.perSecond, r.burst }

// matcher is what a rule compares. Its match is the reference for what a rule means: the
// [index] must agree with it, and rule sets too large to index are scanned with it.
// It fits one cache line: the method and transport bits first (the cheapest test), the source
// prefixes, and the destination behind a pointer (nil for dst=any).
type matcher struct {
	methods    methodSet
	transports transportSet
	srcAny     bool
	src        addrSet
	dst        *dstMatcher
}

type dstMatcher struct {
	sides sideSet
	addrs addrSet
	hosts []hostPattern
}

// match reports whether the rule matches a request reduced to k.
func (m *matcher) match(req *Request, k *keys) bool {
	return m.methods&k.method != 0 && m.transports&k.transport != 0 &&
		(m.srcAny || m.src.contains(&k.src)) && (m.dst == nil || m.dst.match(req, k))
}

func (d *dstMatcher) match(req *Request, k *keys) bool {
	if d.sides != 0 {
		if (d.sides&sideInside != 0 && req.DstSide == Inside) ||
			(d.sides&sideOutside != 0 && req.DstSide == Outside) ||
			(d.sides&sideUpstream != 0 && req.ToUpstream) {
			return true
		}
	}
	if d.addrs.contains(&k.dst) {
		return true
	}
	for i := range d.hosts {
		if d.hosts[i].match(k.host) {
			return true
		}
	}
	return false
}

// keys is a request reduced to what rules compare, computed once per evaluation.
type keys struct {
	src, dst  ipKey
	host      string // DstHost without a trailing dot
	method    methodSet
	transport transportSet
}

// keysOf reduces a request. It returns a value, not a fill through a pointer, so that DstHost
// does not escape and the relay's string([]byte) conversions can stay on its stack.
func keysOf(req *Request) keys {
	return keys{
		src:       ipKeyOf(req.Src.Addr()),
		dst:       ipKeyOf(req.DstAddr),
		host:      strings.TrimSuffix(req.DstHost, "."),
		method:    methodBit(req.Method),
		transport: transportBit(req.Transport),
	}
}

// ipKey is an address as integers: an IPv4 address (or an IPv4-mapped IPv6 one) in v4, an
// IPv6 address in hi and lo.
type ipKey struct {
	family uint8 // 0 (no address), 4 or 6
	v4     uint32
	hi, lo uint64
}

func ipKeyOf(a netip.Addr) ipKey {
	a = a.Unmap()
	switch {
	case a.Is4():
		b := a.As4()
		return ipKey{family: 4, v4: binary.BigEndian.Uint32(b[:])}
	case a.Is6():
		b := a.As16()
		return ipKey{family: 6, hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
	}
	return ipKey{}
}

// addrSet is a set of prefixes, flattened to integers and masks so that matching is a few
// compares per prefix.
type addrSet struct {
	v4 []prefix4
	v6 []prefix6
}

type prefix4 struct{ base, mask uint32 }

type prefix6 struct{ hi, lo, mhi, mlo uint64 }

func (s *addrSet) add(p netip.Prefix) {
	bits := p.Bits()
	if p.Addr().Is4() {
		mask := uint32(0)
		if bits > 0 {
			mask = ^uint32(0) << (32 - bits)
		}
		k := ipKeyOf(p.Addr())
		s.v4 = append(s.v4, prefix4{base: k.v4 & mask, mask: mask})
		return
	}
	var mhi, mlo uint64
	switch {
	case bits >= 64:
		mhi = ^uint64(0)
		if bits > 64 {
			mlo = ^uint64(0) << (128 - bits)
		}
	case bits > 0:
		mhi = ^uint64(0) << (64 - bits)
	}
	k := ipKeyOf(p.Addr())
	s.v6 = append(s.v6, prefix6{hi: k.hi & mhi, lo: k.lo & mlo, mhi: mhi, mlo: mlo})
}

func (s *addrSet) contains(k *ipKey) bool {
	switch k.family {
	case 4:
		for _, p := range s.v4 {
			if k.v4&p.mask == p.base {
				return true
			}
		}
	case 6:
		for _, p := range s.v6 {
			if k.hi&p.mhi == p.hi && k.lo&p.mlo == p.lo {
				return true
			}
		}
	}
	return false
}

// sideSet holds the destination keywords of a rule.
type sideSet uint8

const (
	sideInside sideSet = 1 << iota
	sideOutside
	sideUpstream
)

// hostPattern is a host name of a dst list: an exact name, or "*.example.com", which matches
// every name under example.com but not example.com itself. Names compare without regard to
// ASCII case (rule names are ASCII; a request's Unicode look-alike is another name).
type hostPattern struct {
	name     string // for a wildcard, the suffix with its leading dot (".example.com")
	wildcard bool
}

func (h *hostPattern) match(host string) bool {
	if !h.wildcard {
		return equalLower(host, h.name)
	}
	return len(host) > len(h.name) && equalLower(host[len(host)-len(h.name):], h.name)
}

// equalLower reports whether s equals lower, a lower-case ASCII string, ignoring ASCII case.
func equalLower(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if lowerASCII(s[i]) != lower[i] {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
