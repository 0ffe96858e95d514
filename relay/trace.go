package relay

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// TraceFilter selects the calls whose rewriting is audited at info level and sent to the HEP
// collector (SIPCAR_TRACE): by Call-ID, or by a source address or network, in which case every
// later message of a call that such a source took part in is traced too, whichever side it
// comes from. A nil filter selects nothing.
type TraceFilter struct {
	callIDs map[string]bool
	sources []netip.Prefix

	mu sync.Mutex
	// Calls selected by a source, in two generations rotated every traceMemory, each capped at
	// traceCalls, so that a busy source cannot grow the memory without bound.
	cur, prev map[string]struct{}
	rotated   time.Time
}

const (
	traceMemory = time.Hour
	traceCalls  = 10000
)

// ParseTrace parses SIPCAR_TRACE: terms separated by '|' or ',', each callid:<Call-ID> or
// src:<address or CIDR>. Empty selects nothing (nil).
func ParseTrace(s string) (*TraceFilter, error) {
	f := &TraceFilter{callIDs: map[string]bool{}}
	for _, term := range strings.FieldsFunc(s, func(r rune) bool { return r == '|' || r == ',' }) {
		term = strings.TrimSpace(term)
		if term == "" {
			continue
		}
		kind, val, ok := strings.Cut(term, ":")
		val = strings.TrimSpace(val)
		switch {
		case !ok || val == "":
			return nil, fmt.Errorf("%q: want callid:<Call-ID> or src:<address or CIDR>", term)
		case strings.EqualFold(kind, "callid"):
			f.callIDs[val] = true
		case strings.EqualFold(kind, "src"):
			p, err := netip.ParsePrefix(val)
			if err != nil {
				a, aerr := netip.ParseAddr(val)
				if aerr != nil {
					return nil, fmt.Errorf("%q: want an address or a CIDR", term)
				}
				p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
			}
			f.sources = append(f.sources, p.Masked())
		default:
			return nil, fmt.Errorf("%q: want callid:<Call-ID> or src:<address or CIDR>", term)
		}
	}
	if len(f.callIDs) == 0 && len(f.sources) == 0 {
		return nil, nil
	}
	return f, nil
}

// Match reports whether a message of callID from src is traced.
func (f *TraceFilter) Match(callID string, src netip.Addr, now time.Time) bool {
	if f == nil {
		return false
	}
	if f.callIDs[callID] {
		return true
	}
	if len(f.sources) == 0 {
		return false
	}
	src = src.Unmap()
	bySource := false
	for _, p := range f.sources {
		if p.Contains(src) {
			bySource = true
			break
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if now.Sub(f.rotated) >= traceMemory || f.cur == nil {
		f.prev, f.cur, f.rotated = f.cur, make(map[string]struct{}), now
	}
	if _, ok := f.cur[callID]; ok {
		return true
	}
	if _, ok := f.prev[callID]; ok {
		return true
	}
	if bySource && len(f.cur) < traceCalls {
		f.cur[callID] = struct{}{}
	}
	return bySource
}
