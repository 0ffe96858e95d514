package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestParseFields parses one rule per row and checks which requests it matches: every field and
// every kind of value, read as the engine reads them.
func TestParseFields(t *testing.T) {
	tests := []struct {
		rule    string
		match   []string // requests (see rq) the rule must match
		noMatch []string // and must not
	}{
		{"permit", []string{"", "src=2001:db8:a::1 method=FOO transport=ws"}, nil},
		{"deny src=any dst=any transport=any method=any", []string{"", "src=2001:db8:a::1 method=FOO transport=ws"}, nil},
		{"PERMIT SRC=ANY", []string{""}, nil},

		// src: CIDRs and addresses of both families; IPv4-mapped sources and prefixes are IPv4.
		{"permit src=198.18.0.0/24",
			[]string{"src=198.18.0.7", "src=198.18.0.255", "src=[::ffff:198.18.0.7]:5060"},
			[]string{"src=198.18.1.7", "src=203.0.113.7", "src=2001:db8:a::7"}},
		{"permit src=198.18.0.7", []string{"src=198.18.0.7:1234"}, []string{"src=198.18.0.8"}},
		{"permit src=2001:db8:a::/64", []string{"src=2001:db8:a::5", "src=[2001:db8:a::ffff:1]:5061"}, []string{"src=2001:db8:b::5", "src=198.18.0.7"}},
		{"permit src=2001:db8:a::1", []string{"src=2001:db8:a::1"}, []string{"src=2001:db8:a::2"}},
		{"permit src=2001:db8:a:0:8000::/65", []string{"src=2001:db8:a:0:8000::1"}, []string{"src=2001:db8:a:0:7fff::1"}},
		{"permit src=::ffff:198.18.0.0/120", []string{"src=198.18.0.7"}, []string{"src=198.18.1.7"}},
		{"permit src=0.0.0.0/0", []string{"src=203.0.113.1"}, []string{"src=2001:db8:a::1"}},
		{"permit src=::/0", []string{"src=2001:db8:c::1"}, []string{"src=203.0.113.1"}},
		{"permit src=198.18.0.0/24,203.0.113.9,2001:db8:c::/48",
			[]string{"src=198.18.0.1", "src=203.0.113.9", "src=2001:db8:c:1::1"},
			[]string{"src=203.0.113.10", "src=2001:db8:d::1"}},

		// dst: CIDRs and addresses match DstAddr; host names DstHost; keywords the side.
		{"permit dst=203.0.113.0/24", []string{"dst=203.0.113.5", "dst=::ffff:203.0.113.5"}, []string{"dst=198.51.100.1", "", "host=203.0.113.5"}},
		{"permit dst=2001:db8:c::/64", []string{"dst=2001:db8:c::9"}, []string{"dst=2001:db8:b::9"}},
		{"permit dst=pbx.example.com",
			[]string{"host=pbx.example.com", "host=PBX.Example.COM", "host=pbx.example.com."},
			[]string{"host=a.pbx.example.com", "host=example.com", "dst=203.0.113.5", ""}},
		{"permit dst=PBX.example.com.", []string{"host=pbx.example.com"}, nil},
		{"permit dst=*.example.com",
			[]string{"host=a.example.com", "host=a.b.EXAMPLE.com"},
			[]string{"host=example.com", "host=badexample.com", "host=.example.com"}},
		{"permit dst=inside", []string{"side=inside", "side=inside upstream"}, []string{"side=outside", "upstream", ""}},
		{"permit dst=outside", []string{"side=outside"}, []string{"side=inside"}},
		{"permit dst=upstream", []string{"upstream", "side=inside upstream"}, []string{"side=inside"}},
		{"permit dst=Outside,upstream", []string{"side=outside", "upstream"}, []string{"side=inside"}},
		{"permit dst=inside,203.0.113.0/24,sip.example.net",
			[]string{"side=inside", "dst=203.0.113.1", "host=sip.example.net"},
			[]string{"side=outside dst=198.51.100.1 host=example.net"}},

		// transport: the one a request arrived on, in any case.
		{"permit transport=udp,tls", []string{"transport=udp", "transport=UDP", "transport=tls"}, []string{"transport=tcp", "transport=ws", "transport="}},
		{"permit transport=TCP", []string{"transport=tcp"}, []string{"transport=udp"}},
		{"permit transport=any", []string{"transport=ws", "transport=tcp"}, nil},

		// method: names in rules in any case; a request's method is case-sensitive.
		{"permit method=invite,REGISTER", []string{"method=INVITE", "method=REGISTER"}, []string{"method=invite", "method=OPTIONS", "method=FOO"}},
		{"permit method=any", []string{"method=FOO", "method=OPTIONS"}, nil},

		// every field at once: all must match.
		{"permit src=198.18.0.0/24 dst=outside transport=udp method=INVITE",
			[]string{"side=outside"},
			[]string{"side=inside", "side=outside src=198.18.1.1", "side=outside transport=tcp", "side=outside method=BYE"}},

		// a rate changes what a rule permits, not what it matches.
		{"permit src=198.18.0.0/24 rate=5/s burst=10", []string{"src=198.18.0.9"}, []string{"src=198.18.1.9"}},
		{"deny method=OPTIONS silent", []string{"method=OPTIONS"}, []string{"method=INVITE"}},
	}
	for _, tc := range tests {
		t.Run(tc.rule, func(t *testing.T) {
			rs := mustParse(t, tc.rule)
			if rs.Len() != 1 {
				t.Fatalf("parsed %d rules, want 1", rs.Len())
			}
			r := rs.At(0)
			for _, spec := range tc.match {
				req := rq(t, spec)
				k := keysOf(&req)
				if !r.match(&req, &k) {
					t.Errorf("does not match %q", spec)
				}
			}
			for _, spec := range tc.noMatch {
				req := rq(t, spec)
				k := keysOf(&req)
				if r.match(&req, &k) {
					t.Errorf("matches %q", spec)
				}
			}
		})
	}
}

func TestParseEveryMethod(t *testing.T) {
	for m := range strings.SplitSeq(knownMethods, ", ") {
		r := mustParse(t, "deny method="+strings.ToLower(m)).At(0)
		for other := range strings.SplitSeq(knownMethods, ", ") {
			req := rq(t, "method="+other)
			k := keysOf(&req)
			if got, want := r.match(&req, &k), other == m; got != want {
				t.Errorf("method=%s matches %s: %v, want %v", strings.ToLower(m), other, got, want)
			}
		}
	}
}

// TestParseAttributes checks what a rule says besides what it matches.
func TestParseAttributes(t *testing.T) {
	type attrs struct {
		Text      string
		Action    Action
		Silent    bool
		PerSecond float64
		Burst     int
	}
	tests := []struct {
		rule string
		want attrs
	}{
		{"permit", attrs{"permit", Permit, false, 0, 0}},
		{"Deny  src=any\tsilent", attrs{"Deny src=any silent", Deny, true, 0, 0}},
		{"permit method=INVITE , REGISTER  src = 198.18.0.0/24", attrs{"permit method=INVITE,REGISTER src=198.18.0.0/24", Permit, false, 0, 0}},
		{"permit rate=5/s", attrs{"permit rate=5/s", Permit, false, 5, 5}},
		{"permit rate=5/s burst=10", attrs{"permit rate=5/s burst=10", Permit, false, 5, 10}},
		{"permit burst=10 rate=5/sec", attrs{"permit burst=10 rate=5/sec", Permit, false, 5, 10}},
		{"permit rate=2.5/second", attrs{"permit rate=2.5/second", Permit, false, 2.5, 3}},
		{"permit rate=30/m", attrs{"permit rate=30/m", Permit, false, 0.5, 1}},
		{"permit rate=120/min", attrs{"permit rate=120/min", Permit, false, 2, 2}},
		{"permit rate=60/minute burst=1", attrs{"permit rate=60/minute burst=1", Permit, false, 1, 1}},
		{"permit rate=36/h", attrs{"permit rate=36/h", Permit, false, 0.01, 1}},
		{"permit rate=1/hour", attrs{"permit rate=1/hour", Permit, false, 1.0 / 3600, 1}},
		{"permit rate=1000000/s burst=1000000", attrs{"permit rate=1000000/s burst=1000000", Permit, false, 1e6, 1e6}},
		{"permit rate=5/S silent", attrs{"permit rate=5/S silent", Permit, true, 5, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.rule, func(t *testing.T) {
			r := mustParse(t, tc.rule).At(0)
			ps, b := r.Rate()
			got := attrs{r.String(), r.Action(), r.Silent(), ps, b}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseErrors is every error the syntax has, with the message an operator reads.
func TestParseErrors(t *testing.T) {
	const rateHelp = `want requests per second, minute or hour, such as 5/s, 30/m or 100/h`
	long := strings.Repeat("a", 64) + ".example.com"
	tests := []struct{ rule, err string }{
		// the action
		{"allow src=any", `action: "allow" is not permit or deny`},
		{"src=any", `action: "src=any" is not permit or deny`},
		{"permit =5", `action: "permit=5" is not permit or deny`},
		// terms
		{"permit foo", `rule: "foo" is not field=value or silent`},
		{"permit port=5060", `port: unknown field (want src, dst, transport, method, rate, burst or silent)`},
		{"permit src", `src: no value (want src=...)`},
		{"permit src=", `src: no value (want src=...)`},
		{"permit src=any src=198.18.0.0/24", `src: given twice`},
		{"permit dst=any DST=inside", `dst: given twice`},
		// src
		{"permit src=10.0.0.0/33", `src: invalid CIDR "10.0.0.0/33"`},
		{"permit src=10.0.0.0/", `src: invalid CIDR "10.0.0.0/"`},
		{"permit src=2001:db8::/129", `src: invalid CIDR "2001:db8::/129"`},
		{"permit src=10.0.0.1/24", `src: CIDR "10.0.0.1/24" has host bits set (the network is 10.0.0.0/24)`},
		{"permit src=2001:db8:a::1/64", `src: CIDR "2001:db8:a::1/64" has host bits set (the network is 2001:db8:a::/64)`},
		{"permit src=10.0.0.300", `src: invalid address "10.0.0.300"`},
		{"permit src=10.0.0", `src: invalid address "10.0.0"`},
		{"permit src=2001:db8::g", `src: invalid address "2001:db8::g"`},
		{"permit src=fe80::1%eth0", `src: address "fe80::1%eth0" has a zone; rules take addresses without zones`},
		{"permit src=pbx.example.com", `src: "pbx.example.com" is not an address or CIDR (host names are for dst)`},
		{"permit src=ex_ample", `src: invalid address "ex_ample"`},
		{"permit src=inside", `src: "inside" is a destination keyword; src takes addresses and CIDRs`},
		{"permit src=any,10.0.0.0/8", `src: "any,10.0.0.0/8": any cannot be combined with other values`},
		{"permit src=10.0.0.0/8,,10.1.0.0/16", `src: empty item in list "10.0.0.0/8,,10.1.0.0/16"`},
		{"permit src=10.0.0.0/8,", `src: empty item in list "10.0.0.0/8,"`},
		// dst
		{"permit dst=10.0.0.0/33", `dst: invalid CIDR "10.0.0.0/33"`},
		{"permit dst=10.0.0.1/8", `dst: CIDR "10.0.0.1/8" has host bits set (the network is 10.0.0.0/8)`},
		{"permit dst=203.0.113.256", `dst: invalid address "203.0.113.256"`},
		{"permit dst=exa_mple.com", `dst: invalid host name "exa_mple.com"`},
		{"permit dst=-pbx.example.com", `dst: invalid host name "-pbx.example.com"`},
		{"permit dst=pbx-.example.com", `dst: invalid host name "pbx-.example.com"`},
		{"permit dst=pbx..example.com", `dst: invalid host name "pbx..example.com"`},
		{"permit dst=example.123", `dst: invalid host name "example.123"`},
		{"permit dst=" + long, `dst: invalid host name "` + long + `"`},
		{"permit dst=*.", `dst: invalid host name "*."`},
		{"permit dst=*example.com", `dst: invalid host name "*example.com"`},
		{"permit dst=a.*.example.com", `dst: invalid host name "a.*.example.com"`},
		{`permit dst=a"b`, `dst: invalid host name "a\"b"`},
		{"permit dst=inside,any", `dst: "inside,any": any cannot be combined with other values`},
		{"permit dst=inside,,outside", `dst: empty item in list "inside,,outside"`},
		// transport
		{"permit transport=sctp", `transport: unknown transport "sctp" (want udp, tcp, tls or any)`},
		{"permit transport=udp,ws", `transport: unknown transport "ws" (want udp, tcp, tls or any)`},
		{"permit transport=udp,any", `transport: "udp,any": any cannot be combined with other values`},
		// method
		{"permit method=INVTE", `method: unknown SIP method "INVTE" (known: ` + knownMethods + `; method=any matches the others)`},
		{"permit method=INVITE,", `method: empty item in list "INVITE,"`},
		{"permit method=any,BYE", `method: "any,BYE": any cannot be combined with other values`},
		// rate
		{"permit rate=5", `rate: "5": ` + rateHelp},
		{"permit rate=five/s", `rate: "five/s": "five" is not a number such as 5 or 0.5`},
		{"permit rate=-1/s", `rate: "-1/s": "-1" is not a number such as 5 or 0.5`},
		{"permit rate=1e3/s", `rate: "1e3/s": "1e3" is not a number such as 5 or 0.5`},
		{"permit rate=.5/s", `rate: ".5/s": ".5" is not a number such as 5 or 0.5`},
		{"permit rate=/s", `rate: "/s": "" is not a number such as 5 or 0.5`},
		{"permit rate=0/s", `rate: "0/s": the count must be more than 0`},
		{"permit rate=0.0/s", `rate: "0.0/s": the count must be more than 0`},
		{"permit rate=5/d", `rate: "5/d": unknown unit "d" (want s, m or h)`},
		{"permit rate=5/", `rate: "5/": unknown unit "" (want s, m or h)`},
		{"permit rate=2000000/s", `rate: "2000000/s": faster than 1000000/s`},
		{"permit rate=0.5/h", `rate: "0.5/h": slower than 1/h`},
		{"deny rate=5/s", `rate: a deny rule refuses every request it matches; rate is for permit rules`},
		// burst
		{"permit rate=5/s burst=0", `burst: "0": want a whole number from 1 to 1000000`},
		{"permit rate=5/s burst=1.5", `burst: "1.5": want a whole number from 1 to 1000000`},
		{"permit rate=5/s burst=+5", `burst: "+5": want a whole number from 1 to 1000000`},
		{"permit rate=5/s burst=ten", `burst: "ten": want a whole number from 1 to 1000000`},
		{"permit rate=5/s burst=1000001", `burst: "1000001": want a whole number from 1 to 1000000`},
		{"permit burst=10", `burst: needs a rate`},
		{"permit rate=5/s burst=1 burst=2", `burst: given twice`},
		// silent
		{"permit silent", `silent: a permit rule without a rate refuses nothing`},
		{"deny silent=yes", `silent: takes no value`},
		{"deny silent silent", `silent: given twice`},
	}
	for _, tc := range tests {
		t.Run(tc.rule, func(t *testing.T) {
			// The bad rule is the second, so that the number is checked too.
			rs, err := Parse("permit src=198.18.0.0/24; " + tc.rule)
			if err == nil {
				t.Fatalf("parsed to %q, want an error", rs)
			}
			if rs != nil {
				t.Errorf("returned rules with the error")
			}
			var re *RuleError
			if !errors.As(err, &re) {
				t.Fatalf("error %T is not a *RuleError", err)
			}
			want := fmt.Sprintf("policy rule 2 %q: %s", strings.Join(tokenize(tc.rule), " "), tc.err)
			if err.Error() != want {
				t.Errorf("error\n got: %s\nwant: %s", err, want)
			}
			if re.Rule != 2 || re.Line != 1 {
				t.Errorf("rule %d line %d, want rule 2 line 1", re.Rule, re.Line)
			}
		})
	}
}

func TestParseLeadExample(t *testing.T) {
	_, err := Parse("permit src=198.18.0.0/24 method=INVITE,REGISTER\ndeny src=10.0.0.0/33")
	want := `policy rule 2 "deny src=10.0.0.0/33": src: invalid CIDR "10.0.0.0/33"`
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %s", err, want)
	}
}

// TestParseText checks how a text becomes rules: separators, comments, numbering, lines.
func TestParseText(t *testing.T) {
	text := "# sipcar policy\n" +
		"permit src=198.18.0.0/24 method=INVITE,REGISTER   # the phones\r\n" +
		"\n" +
		"deny src=203.0.113.66 silent; ; deny method=OPTIONS silent;\n" +
		"   \t\n" +
		"permit dst=upstream rate=5/s burst=10\n" +
		"deny src=any # the rest; not a rule"
	rs := mustParse(t, text)
	type row struct {
		Text string
		Line int
	}
	var got []row
	for i := range rs.Len() {
		got = append(got, row{rs.At(i).String(), rs.At(i).Line()})
	}
	want := []row{
		{"permit src=198.18.0.0/24 method=INVITE,REGISTER", 2},
		{"deny src=203.0.113.66 silent", 4},
		{"deny method=OPTIONS silent", 4},
		{"permit dst=upstream rate=5/s burst=10", 6},
		{"deny src=any", 7},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	// String reads back to the same rules.
	again := mustParse(t, rs.String())
	if again.String() != rs.String() || again.Len() != rs.Len() {
		t.Errorf("String %q reads back as %q", rs, again)
	}
	for _, empty := range []string{"", "  ", ";;", "# nothing\n\n", "\n;\n"} {
		if rs := mustParse(t, empty); rs.Len() != 0 {
			t.Errorf("Parse(%q) = %d rules, want 0", empty, rs.Len())
		}
	}
}

// TestParseAllErrors checks that every bad rule is reported, one line each, with its number and
// line, and that rule numbers count only rules.
func TestParseAllErrors(t *testing.T) {
	text := "# comment\npermit src=198.18.0.0/24\n\ndeny src=10.0.0.0/33; permit method=INVTE\npermit\nallow"
	_, err := Parse(text)
	if err == nil {
		t.Fatal("no error")
	}
	want := `policy rule 2 "deny src=10.0.0.0/33": src: invalid CIDR "10.0.0.0/33"` + "\n" +
		`policy rule 3 "permit method=INVTE": method: unknown SIP method "INVTE" (known: ` + knownMethods + `; method=any matches the others)` + "\n" +
		`policy rule 5 "allow": action: "allow" is not permit or deny`
	if err.Error() != want {
		t.Errorf("error\n got: %s\nwant: %s", err, want)
	}
	var lines []int
	for _, e := range unjoin(err) {
		lines = append(lines, e.(*RuleError).Line)
	}
	if diff := cmp.Diff([]int{4, 4, 6}, lines); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "# phones\npermit src=198.18.0.0/24\ndeny src=any silent\n")
	rs, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rs.String(), "permit src=198.18.0.0/24; deny src=any silent"; got != want {
		t.Errorf("loaded %q, want %q", got, want)
	}

	bad := write("bad", "permit src=198.18.0.0/24\n\n# next is wrong\ndeny src=10.0.0.0/33\npermit transport=sctp\n")
	_, err = Load(bad)
	want := bad + `:4: policy rule 2 "deny src=10.0.0.0/33": src: invalid CIDR "10.0.0.0/33"` + "\n" +
		bad + `:5: policy rule 3 "permit transport=sctp": transport: unknown transport "sctp" (want udp, tcp, tls or any)`
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
	var re *RuleError
	if !errors.As(err, &re) || re.Rule != 2 {
		t.Errorf("error does not unwrap to rule 2's *RuleError: %v", re)
	}

	if _, err := Load(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	big := write("big", strings.Repeat("permit src=198.18.0.0/24\n", maxFileSize/25+1))
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than 1048576 bytes") {
		t.Errorf("big file: %v", err)
	}
}

func TestParseAction(t *testing.T) {
	for in, want := range map[string]Action{"permit": Permit, "DENY": Deny, " deny ": Deny, "Permit": Permit} {
		if got, err := ParseAction(in); err != nil || got != want {
			t.Errorf("ParseAction(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "allow", "drop", "permit deny"} {
		if _, err := ParseAction(in); err == nil || err.Error() != `"`+in+`" is not permit or deny` {
			t.Errorf("ParseAction(%q): %v", in, err)
		}
	}
}

func TestInitial(t *testing.T) {
	counted := map[string]bool{"INVITE": true, "REGISTER": true, "SUBSCRIBE": true, "REFER": true, "MESSAGE": true, "PUBLISH": true}
	for m := range strings.SplitSeq(knownMethods+", FOO, invite", ", ") {
		if got := Initial(m, false); got != counted[m] {
			t.Errorf("Initial(%s, out of dialog) = %v", m, got)
		}
		if Initial(m, true) {
			t.Errorf("Initial(%s, in dialog) = true", m)
		}
	}
}

func TestParseNonASCII(t *testing.T) {
	for _, rule := range []string{"permit transport=tlſ", "permit method=ınvıte", "deny dst=bücher.example", "permit src=any\x00"} {
		_, err := Parse(rule)
		var re *RuleError
		if !errors.As(err, &re) || re.Field != "rule" || !strings.Contains(re.Err.Error(), "is not allowed (rules are printable ASCII)") {
			t.Errorf("Parse(%q): %v", rule, err)
		}
	}
}

func TestParseManyErrors(t *testing.T) {
	_, err := Parse(strings.Repeat("allow\n", 25))
	errs := unjoin(err)
	if len(errs) != maxErrors+1 {
		t.Fatalf("%d errors, want %d", len(errs), maxErrors+1)
	}
	if got := errs[maxErrors].Error(); got != "policy: 5 more bad rules" {
		t.Errorf("last error %q", got)
	}
	var re *RuleError
	if !errors.As(errs[maxErrors-1], &re) || re.Rule != maxErrors || re.Line != maxErrors {
		t.Errorf("error %d: %v", maxErrors, errs[maxErrors-1])
	}
}
