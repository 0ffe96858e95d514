package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a [Policy].
type Config struct {
	// Default is the action for requests no rule matches (SIPCAR_POLICY_DEFAULT): the relay
	// passes Permit in upstream mode and Deny in transparent mode unless the operator says
	// otherwise. It is required.
	Default Action

	// MaxSources caps the sources each rate rule tracks; 0 means [DefaultMaxSources]. What
	// happens at the cap is described in README.md.
	MaxSources int

	// Clock returns the current time. Nil means the system clock, read as the time at New plus
	// the monotonic time since: one clock read per evaluation instead of the two of time.Now,
	// and rates immune to wall clock steps (so are "last hit" times, which are shown from the
	// wall clock at New).
	Clock func() time.Time

	// Registerer receives the policy's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Policy is the rule set in force with its default action, counters and rate limiters. Its
// methods are safe for concurrent use.
type Policy struct {
	def        Action
	maxSources int
	clock      func() time.Time // nil: the system's monotonic clock
	epoch      time.Time        // times are kept as nanoseconds since this instant
	defStats   *stats

	swapMu sync.Mutex // serializes Swap
	active atomic.Pointer[ruleSet]
}

// ruleSet is a [Rules] as a Policy runs it: each rule with its counters and Warning texts.
type ruleSet struct {
	rules   *Rules
	list    []Rule  // rules.rules, or nil
	entries []entry // one per rule of list
	def     entry
	loaded  time.Time
}

type entry struct {
	stats   *stats
	deny    string // Warning header value when the rule denies
	limited string // Warning header value when the rule's rate refuses
}

// stats are the counters of a rule. A reload hands them on to the new rule of the same text.
type stats struct {
	hits    atomic.Uint64
	lastHit atomic.Int64 // nanoseconds since the epoch plus 1; 0: never
	limited atomic.Uint64
	limiter *limiter // nil for a rule without a rate
}

// New returns a Policy that enforces rules (nil: none, only the default).
func New(rules *Rules, cfg Config) (*Policy, error) {
	if cfg.Default != Permit && cfg.Default != Deny {
		return nil, errors.New("policy: default action must be permit or deny")
	}
	if cfg.MaxSources < 0 {
		return nil, fmt.Errorf("policy: max sources %d is negative", cfg.MaxSources)
	}
	if cfg.MaxSources == 0 {
		cfg.MaxSources = DefaultMaxSources
	}
	p := &Policy{
		def:        cfg.Default,
		maxSources: cfg.MaxSources,
		clock:      cfg.Clock,
		defStats:   &stats{},
	}
	p.epoch = time.Now()
	if p.clock != nil {
		p.epoch = p.clock()
	}
	p.Swap(rules)
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(newCollector(p)); err != nil {
			return nil, fmt.Errorf("policy: register metrics: %w", err)
		}
	}
	return p, nil
}

// Default returns the action for requests no rule matches.
func (p *Policy) Default() Action { return p.def }

// Rules returns the rule set in force (never nil).
func (p *Policy) Rules() *Rules { return p.active.Load().rules }

// Swap puts rules (nil: none) in force, atomically: an evaluation sees either the old rules or
// the new ones. A new rule whose text (spacing aside) is that of an old rule takes over its hit
// counters and its rate limiter's buckets, wherever it moved in the list; duplicate texts are
// paired in order. Counters of rules that are gone are dropped; the default's counters stay.
func (p *Policy) Swap(rules *Rules) {
	if rules == nil {
		rules = &Rules{}
	}
	p.swapMu.Lock()
	defer p.swapMu.Unlock()
	carried := map[string][]*stats{}
	if old := p.active.Load(); old != nil {
		for i := range old.list {
			t := old.list[i].text
			carried[t] = append(carried[t], old.entries[i].stats)
		}
	}
	set := &ruleSet{
		rules:   rules,
		list:    rules.rules,
		entries: make([]entry, len(rules.rules)),
		def:     entry{stats: p.defStats, deny: warning("denied by policy default", p.def.String())},
		loaded:  p.timeOf(p.now()),
	}
	for i := range set.list {
		r := &set.list[i]
		st := &stats{}
		if s := carried[r.text]; len(s) > 0 {
			st, carried[r.text] = s[0], s[1:]
		} else if r.perSecond > 0 {
			st.limiter = newLimiter(r.perSecond, r.burst, p.maxSources)
		}
		name := "rule " + strconv.Itoa(i+1)
		set.entries[i] = entry{
			stats:   st,
			deny:    warning("denied by policy "+name, r.text),
			limited: warning("rate limited by policy "+name, r.text),
		}
	}
	p.active.Store(set)
}

// warning returns a Warning header value (RFC 3261 section 20.43) with the miscellaneous
// code 399. Rule texts hold no quotes or backslashes (the syntax has no place for them).
func warning(what, text string) string {
	return `399 sipcar "` + what + ": " + text + `"`
}

// ReloadFile loads the rule file at path and swaps it in. When the file does not parse, the
// rules in force stay and the error says what is wrong, one line per bad rule.
func (p *Policy) ReloadFile(path string) error {
	rules, err := Load(path)
	if err != nil {
		return err
	}
	p.Swap(rules)
	return nil
}

// Request is what a rule looks at in a SIP request.
type Request struct {
	// Src is the transport address the request came from.
	Src netip.AddrPort
	// DstAddr is the address the request goes to: in transparent mode its original destination,
	// in upstream mode the next hop's address when it is known. DstHost is the host name it is
	// addressed to (the Request-URI host), when that is a name. dst= CIDRs match DstAddr, host
	// names match DstHost.
	DstAddr netip.Addr
	DstHost string
	// DstSide is the side the request goes to; ToUpstream says its next hop is SIPCAR_UPSTREAM.
	// They are what dst=inside, dst=outside and dst=upstream match.
	DstSide    Side
	ToUpstream bool
	// Transport is the transport it arrived on: "udp", "tcp" or "tls" (any case).
	Transport string
	// Method is the request's method, compared case-sensitively as RFC 3261 says.
	Method string
	// Initial says the request starts a dialog or registration (see [Initial]): only these
	// count against a rule's rate.
	Initial bool
	// Time is when the request arrived, for the rate and the "last hit"; zero means now, by
	// Config.Clock. A caller that has already read the clock for the message (with time.Now,
	// or with Config.Clock when it set one) passes that reading and saves a clock read.
	Time time.Time
}

// Decision is what the policy decided for a request.
type Decision struct {
	// Action is Permit or Deny. A request over its rule's rate is denied.
	Action Action
	// Silent says a denied request gets no answer: the rule says "silent", or the request is an
	// ACK, which is never answered.
	Silent bool
	// RateLimited says the rule permits the request but its source is over the rule's rate;
	// RetryAfter is how long until the source may send another.
	RateLimited bool
	RetryAfter  time.Duration
	// Rule is the number of the rule that decided, from 1; 0 is the default, whose Text is its
	// action. Text is the rule as written.
	Rule int
	Text string
	// Warning is the value of the Warning header for the answer to a denied request, such as
	// `399 sipcar "denied by policy rule 2: deny src=any"`; empty when permitted.
	Warning string
}

// Status returns the status code to answer the request with: 0 when it is permitted or dropped
// silently, 503 (Service Unavailable, with a Retry-After of RetryAfter rounded up to seconds)
// when it is over its rule's rate, 403 (Forbidden) when a rule denies it.
func (d Decision) Status() int {
	switch {
	case d.Action != Deny || d.Silent:
		return 0
	case d.RateLimited:
		return 503
	}
	return 403
}

// RetryAfterSeconds returns RetryAfter rounded up to whole seconds, at least 1, for the
// Retry-After header of a 503.
func (d Decision) RetryAfterSeconds() int {
	return max(1, int((d.RetryAfter+time.Second-1)/time.Second))
}

// Evaluate decides a request: the first rule that matches it, or the default. It counts the
// hit, and for a rule with a rate and an [Request.Initial] request takes a token from the
// source's bucket. It allocates nothing, except the first time a rate rule sees a source.
func (p *Policy) Evaluate(req Request) Decision {
	set := p.active.Load()
	k := keysOf(&req)
	var now int64
	if req.Time.IsZero() {
		now = p.now()
	} else {
		now = int64(req.Time.Sub(p.epoch))
	}
	if i := set.rules.first(&req, &k); i >= 0 {
		r, e := &set.list[i], &set.entries[i]
		e.stats.hit(now)
		d := Decision{Action: r.action, Rule: i + 1, Text: r.text}
		if r.action == Deny {
			d.Silent, d.Warning = r.silent || k.method == mAck, e.deny
			return d
		}
		if e.stats.limiter != nil && req.Initial {
			if ok, retry := e.stats.limiter.take(sourceKeyOf(&k.src), now); !ok {
				e.stats.limited.Add(1)
				d.Action, d.RateLimited, d.RetryAfter = Deny, true, retry
				d.Silent, d.Warning = r.silent || k.method == mAck, e.limited
			}
		}
		return d
	}
	set.def.stats.hit(now)
	d := Decision{Action: p.def, Text: p.def.String()}
	if p.def == Deny {
		d.Silent, d.Warning = k.method == mAck, set.def.deny
	}
	return d
}

func (s *stats) hit(now int64) {
	s.hits.Add(1)
	s.lastHit.Store(now + 1)
}

// now returns the time by the policy's clock, in nanoseconds since its epoch.
func (p *Policy) now() int64 {
	if p.clock == nil {
		return int64(time.Since(p.epoch))
	}
	return int64(p.clock().Sub(p.epoch))
}

// timeOf returns the time of now, a result of [Policy.now].
func (p *Policy) timeOf(now int64) time.Time { return p.epoch.Add(time.Duration(now)) }
