package policy

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Limits of the syntax, documented in README.md.
const (
	maxPerSecond = 1_000_000
	minPerSecond = 1.0 / 3600 // 1/h: slower buckets would hold idle sources for days
	maxBurst     = 1_000_000
	maxFileSize  = 1 << 20
	maxErrors    = 20 // bad rules reported one by one; the rest are counted
)

// RuleError is what is wrong with one rule. [Parse] returns one per rule that does not parse,
// joined with [errors.Join]; its Error is one line:
//
//	policy rule 2 "deny src=10.0.0.0/33": src: invalid CIDR "10.0.0.0/33"
type RuleError struct {
	Rule  int    // the rule's number, from 1
	Line  int    // the line of the text it starts on, from 1
	Text  string // the rule as written, spacing normalized
	Field string // the field that is wrong: "action", "src", "dst", ...
	Err   error
}

func (e *RuleError) Error() string {
	return fmt.Sprintf("policy rule %d %q: %s: %v", e.Rule, e.Text, e.Field, e.Err)
}

func (e *RuleError) Unwrap() error { return e.Err }

// Parse parses rules in the syntax of README.md: rules separated by ";" or newlines, "#" starting
// a comment that runs to the end of its line, empty rules ignored. Each rule is an action
// (permit or deny) followed by fields (src=, dst=, transport=, method=, rate=, burst=) and the
// flag silent. When rules do not parse, Parse returns no rules and an error with one
// [*RuleError] per bad rule, each on its own line (the first 20; then how many more).
func Parse(text string) (*Rules, error) {
	rs := &Rules{}
	var errs []error
	n := 0
	for lineIdx, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for part := range strings.SplitSeq(line, ";") {
			toks := tokenize(part)
			if len(toks) == 0 {
				continue
			}
			n++
			text := strings.Join(toks, " ")
			r, field, err := parseRule(toks)
			if c, ok := badChar(text); ok {
				field, err = "rule", fmt.Errorf("%q is not allowed (rules are printable ASCII)", c)
			}
			if err != nil {
				errs = append(errs, &RuleError{Rule: n, Line: lineIdx + 1, Text: text, Field: field, Err: err})
				continue
			}
			r.text, r.line = text, lineIdx+1
			rs.rules = append(rs.rules, r)
			rs.matchers = append(rs.matchers, r.matcher)
		}
	}
	if len(errs) > maxErrors {
		more := len(errs) - maxErrors
		errs = append(errs[:maxErrors], fmt.Errorf("policy: %d more bad rules", more))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	rs.index = newIndex(rs.matchers)
	return rs, nil
}

// Load reads and parses the rule file at path (SIPCAR_POLICY_FILE). Each error names the file
// and line: "/etc/sipcar/policy:7: policy rule 3 ...".
func Load(path string) (*Rules, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("load policy %s: larger than %d bytes", path, maxFileSize)
	}
	rs, err := Parse(string(b))
	if err != nil {
		var ruleErrs []error
		for _, e := range unjoin(err) {
			var re *RuleError
			if errors.As(e, &re) {
				e = fmt.Errorf("%s:%d: %w", path, re.Line, re)
			}
			ruleErrs = append(ruleErrs, e)
		}
		return nil, errors.Join(ruleErrs...)
	}
	return rs, nil
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// tokenize splits a rule at white space, except around "=" and ",": "method=INVITE, REGISTER"
// is the two tokens "method=INVITE,REGISTER".
func tokenize(s string) []string {
	var toks []string
	for f := range strings.FieldsFuncSeq(s, isSpace) {
		if n := len(toks); n > 0 && (strings.HasSuffix(toks[n-1], "=") || strings.HasSuffix(toks[n-1], ",") ||
			strings.HasPrefix(f, "=") || strings.HasPrefix(f, ",")) {
			toks[n-1] += f
			continue
		}
		toks = append(toks, f)
	}
	return toks
}

// badChar returns the first character of a rule that is not printable ASCII. Checking it keeps
// Unicode case folding (strings.EqualFold("tlſ", "tls")) from letting odd text into rules,
// and rule texts safe to quote in a Warning header.
func badChar(s string) (rune, bool) {
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			return c, true
		}
	}
	return 0, false
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\r' || r == '\v' || r == '\f' }

// Fields of a rule, as bits for "given twice".
const (
	fSrc = 1 << iota
	fDst
	fTransport
	fMethod
	fRate
	fBurst
	fSilent
)

func fieldBit(name string) int {
	switch name {
	case "src":
		return fSrc
	case "dst":
		return fDst
	case "transport":
		return fTransport
	case "method":
		return fMethod
	case "rate":
		return fRate
	case "burst":
		return fBurst
	case "silent":
		return fSilent
	}
	return 0
}

// parseRule parses one rule's tokens; on error it returns the field that is wrong.
func parseRule(toks []string) (Rule, string, error) {
	r := Rule{matcher: matcher{srcAny: true, methods: methodsAny, transports: transportsAny}}
	switch strings.ToLower(toks[0]) {
	case "permit":
		r.action = Permit
	case "deny":
		r.action = Deny
	default:
		return r, "action", fmt.Errorf("%q is not permit or deny", toks[0])
	}
	var seen int
	for _, tok := range toks[1:] {
		name, value, hasValue := strings.Cut(tok, "=")
		field := strings.ToLower(name)
		bit := fieldBit(field)
		switch {
		case bit == 0 && !hasValue:
			return r, "rule", fmt.Errorf("%q is not field=value or silent", tok)
		case bit == 0:
			return r, field, errors.New("unknown field (want src, dst, transport, method, rate, burst or silent)")
		case bit == fSilent && hasValue:
			return r, field, errors.New("takes no value")
		case bit != fSilent && value == "":
			return r, field, errors.New("no value (want " + field + "=...)")
		case seen&bit != 0:
			return r, field, errors.New("given twice")
		}
		seen |= bit
		var err error
		switch bit {
		case fSrc:
			err = r.parseSrc(value)
		case fDst:
			err = r.parseDst(value)
		case fTransport:
			err = r.parseTransport(value)
		case fMethod:
			err = r.parseMethod(value)
		case fRate:
			err = r.parseRate(value)
		case fBurst:
			err = r.parseBurst(value)
		case fSilent:
			r.silent = true
		}
		if err != nil {
			return r, field, err
		}
	}
	if seen&fBurst != 0 && seen&fRate == 0 {
		return r, "burst", errors.New("needs a rate")
	}
	if r.perSecond > 0 && r.action == Deny {
		return r, "rate", errors.New("a deny rule refuses every request it matches; rate is for permit rules")
	}
	if r.silent && r.action == Permit && r.perSecond == 0 {
		return r, "silent", errors.New("a permit rule without a rate refuses nothing")
	}
	if r.perSecond > 0 && seen&fBurst == 0 {
		r.burst = max(1, int(math.Ceil(r.perSecond)))
	}
	return r, "", nil
}

// list splits a comma-separated value and reports whether it is "any".
func list(value string) (items []string, isAny bool, err error) {
	items = strings.Split(value, ",")
	for _, it := range items {
		if it == "" {
			return nil, false, fmt.Errorf("empty item in list %q", value)
		}
		if strings.EqualFold(it, "any") {
			isAny = true
		}
	}
	if isAny && len(items) > 1 {
		return nil, false, fmt.Errorf("%q: any cannot be combined with other values", value)
	}
	return items, isAny, nil
}

func (r *Rule) parseSrc(value string) error {
	items, isAny, err := list(value)
	if err != nil || isAny {
		return err
	}
	r.srcAny = false
	for _, it := range items {
		if isSideKeyword(it) {
			return fmt.Errorf("%q is a destination keyword; src takes addresses and CIDRs", it)
		}
		if !looksLikeAddr(it) {
			if _, err := parseHost(it); err == nil {
				return fmt.Errorf("%q is not an address or CIDR (host names are for dst)", it)
			}
		}
		p, err := parsePrefix(it)
		if err != nil {
			return err
		}
		r.src.add(p)
	}
	return nil
}

func (r *Rule) parseDst(value string) error {
	items, isAny, err := list(value)
	if err != nil || isAny {
		return err
	}
	d := &dstMatcher{}
	r.dst = d
	for _, it := range items {
		switch strings.ToLower(it) {
		case "inside":
			d.sides |= sideInside
			continue
		case "outside":
			d.sides |= sideOutside
			continue
		case "upstream":
			d.sides |= sideUpstream
			continue
		}
		if looksLikeAddr(it) {
			p, err := parsePrefix(it)
			if err != nil {
				return err
			}
			d.addrs.add(p)
			continue
		}
		h, err := parseHost(it)
		if err != nil {
			return err
		}
		d.hosts = append(d.hosts, h)
	}
	return nil
}

func (r *Rule) parseTransport(value string) error {
	items, isAny, err := list(value)
	if err != nil || isAny {
		return err
	}
	r.transports = 0
	for _, it := range items {
		b := transportBit(it)
		if b == tOther {
			return fmt.Errorf("unknown transport %q (want udp, tcp, tls or any)", it)
		}
		r.transports |= b
	}
	return nil
}

func (r *Rule) parseMethod(value string) error {
	items, isAny, err := list(value)
	if err != nil || isAny {
		return err
	}
	r.methods = 0
	for _, it := range items {
		b, ok := ruleMethodBit(it)
		if !ok {
			return fmt.Errorf("unknown SIP method %q (known: %s; method=any matches the others)", it, knownMethods)
		}
		r.methods |= b
	}
	return nil
}

// parseRate parses "5/s", "30/m", "100/h", "0.5/s".
func (r *Rule) parseRate(value string) error {
	num, unit, ok := strings.Cut(value, "/")
	if !ok {
		return fmt.Errorf("%q: want requests per second, minute or hour, such as 5/s, 30/m or 100/h", value)
	}
	if !isDecimal(num) {
		return fmt.Errorf("%q: %q is not a number such as 5 or 0.5", value, num)
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("%q: the count must be more than 0", value)
	}
	var per float64
	switch strings.ToLower(unit) {
	case "s", "sec", "second":
		per = 1
	case "m", "min", "minute":
		per = 60
	case "h", "hour":
		per = 3600
	default:
		return fmt.Errorf("%q: unknown unit %q (want s, m or h)", value, unit)
	}
	r.perSecond = n / per
	if r.perSecond > maxPerSecond {
		return fmt.Errorf("%q: faster than %d/s", value, maxPerSecond)
	}
	if r.perSecond < minPerSecond*(1-1e-9) {
		return fmt.Errorf("%q: slower than 1/h", value)
	}
	return nil
}

func (r *Rule) parseBurst(value string) error {
	n, err := strconv.Atoi(value)
	if err != nil || !isDecimal(value) || strings.Contains(value, ".") || n < 1 || n > maxBurst {
		return fmt.Errorf("%q: want a whole number from 1 to %d", value, maxBurst)
	}
	r.burst = n
	return nil
}

// isDecimal reports whether s is digits with at most one decimal point between digits.
func isDecimal(s string) bool {
	digits, dot := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot && i > 0 && i < len(s)-1:
			dot = true
		default:
			return false
		}
	}
	return digits > 0
}

func isSideKeyword(s string) bool {
	return strings.EqualFold(s, "inside") || strings.EqualFold(s, "outside") || strings.EqualFold(s, "upstream")
}

// looksLikeAddr reports whether s is meant as an address or CIDR rather than a host name: it has
// a "/" or ":", or only digits and dots.
func looksLikeAddr(s string) bool {
	if strings.ContainsAny(s, "/:") {
		return true
	}
	return strings.Trim(s, "0123456789.") == ""
}

// parsePrefix parses an address (a prefix of its full length) or a CIDR. IPv4-mapped IPv6
// prefixes become IPv4 prefixes, because requests are matched by their unmapped addresses.
func parsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		p, err = netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("invalid CIDR %q", s)
		}
		if m := p.Masked(); m != p {
			return p, fmt.Errorf("CIDR %q has host bits set (the network is %s)", s, m)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("invalid address %q", s)
		}
		if a.Zone() != "" {
			return p, fmt.Errorf("address %q has a zone; rules take addresses without zones", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

// parseHost parses a host name of a dst list: letters, digits and hyphens in dot-separated labels
// (RFC 1123), a top label that is not all digits, optionally "*." in front and one dot at the end.
func parseHost(s string) (hostPattern, error) {
	name := strings.TrimSuffix(s, ".")
	h := hostPattern{}
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		h.wildcard, name = true, rest
	}
	if !validHostName(name) {
		return h, fmt.Errorf("invalid host name %q", s)
	}
	h.name = strings.ToLower(name)
	if h.wildcard {
		h.name = "." + h.name
	}
	return h, nil
}

func validHostName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	var label string
	for label = range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return strings.Trim(label, "0123456789") != ""
}
