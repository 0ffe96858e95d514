package policy

import (
	"cmp"
	"math/bits"
	"slices"
)

// The largest rule set that gets an [index]: its memory grows with rules × (prefixes + host
// names), to about 1.5 MB at these limits. Larger sets are scanned rule by rule.
const (
	maxIndexedRules = 1024
	maxIndexedItems = 4096 // prefixes and host names, in all rules
)

// index finds the first rule that matches a request without looking at the rules one by one.
// It is the bit-vector scheme of packet classifiers: for each field, the set of rules the
// request's value can match is a precomputed bit set (bit i for rule i), looked up in one step
// (methods × transports) or by binary search (addresses: the address space is cut at every
// prefix boundary into intervals, each with the rules whose prefixes cover it). The AND of the
// sets holds the rules that match; the lowest bit is the first rule. Host names are looked up in
// maps (the name, then each parent domain for wildcards).
//
// The index is exact, not a filter: an interval lies wholly inside or wholly outside every
// prefix, and every other field is a set lookup. So it decides without [matcher.match], the
// reference it must agree with; TestIndexAgreesWithScan and FuzzParse check that it does.
type index struct {
	words int      // uint64s per bit set
	mt    []uint64 // per (method bit, transport bit): the rules whose method and transport lists hold them
	src   span     // per source address: the rules with a src prefix covering it
	dst   span     // per destination address: the rules with a dst prefix covering it

	srcAny  []uint64 // rules without src
	dstAny  []uint64 // rules without dst
	dstSide [3][]uint64
	// rules by dst host name (lower case), and by wildcard suffix (".example.com"), with the
	// lengths present in each map, so that most lookups that would miss are skipped
	hostExact, hostWild   map[string][]uint64
	exactLens, wildLens   lengths
	exactRules, wildRules []uint64 // rules with exact names, with wildcards
}

// lengths is a set of string lengths from 0 to 255.
type lengths [4]uint64

func (l *lengths) add(n int)      { l[n/64] |= 1 << (n % 64) }
func (l *lengths) has(n int) bool { return n < 256 && l[n/64]&(1<<(n%64)) != 0 }

const (
	methodBits    = 15 // mInvite .. mOther
	transportBits = 4  // tUDP .. tOther
)

// span holds, per address family, the intervals between prefix boundaries and each one's rules.
type span struct {
	v4starts []uint32
	v4bits   []uint64
	v6starts []u128
	v6bits   []uint64
}

type u128 struct{ hi, lo uint64 }

func (a u128) cmp(b u128) int {
	if c := cmp.Compare(a.hi, b.hi); c != 0 {
		return c
	}
	return cmp.Compare(a.lo, b.lo)
}

func (a u128) next() u128 {
	if a.lo == ^uint64(0) {
		return u128{a.hi + 1, 0}
	}
	return u128{a.hi, a.lo + 1}
}

func newIndex(ms []matcher) *index {
	items := 0
	for i := range ms {
		items += len(ms[i].src.v4) + len(ms[i].src.v6)
		if d := ms[i].dst; d != nil {
			items += len(d.addrs.v4) + len(d.addrs.v6) + len(d.hosts)
		}
	}
	if len(ms) > maxIndexedRules || items > maxIndexedItems {
		return nil
	}
	w := (len(ms) + 63) / 64
	ix := &index{
		words:      w,
		mt:         make([]uint64, methodBits*transportBits*w),
		srcAny:     make([]uint64, w),
		dstAny:     make([]uint64, w),
		exactRules: make([]uint64, w),
		wildRules:  make([]uint64, w),
		hostExact:  map[string][]uint64{},
		hostWild:   map[string][]uint64{},
	}
	for s := range ix.dstSide {
		ix.dstSide[s] = make([]uint64, w)
	}
	var src4, dst4 []rulePrefix4
	var src6, dst6 []rulePrefix6
	for i := range ms {
		m := &ms[i]
		word, bit := i/64, uint64(1)<<(i%64)
		for mb := range methodBits {
			for tb := range transportBits {
				if m.methods&(1<<mb) != 0 && m.transports&(1<<tb) != 0 {
					ix.mt[(mb*transportBits+tb)*w+word] |= bit
				}
			}
		}
		if m.srcAny {
			ix.srcAny[word] |= bit
		}
		for _, p := range m.src.v4 {
			src4 = append(src4, rulePrefix4{i, p})
		}
		for _, p := range m.src.v6 {
			src6 = append(src6, rulePrefix6{i, p})
		}
		if m.dst == nil {
			ix.dstAny[word] |= bit
			continue
		}
		for _, h := range m.dst.hosts {
			byName, lens, rules := ix.hostExact, &ix.exactLens, ix.exactRules
			if h.wildcard {
				byName, lens, rules = ix.hostWild, &ix.wildLens, ix.wildRules
			}
			lens.add(len(h.name))
			rules[word] |= bit
			if byName[h.name] == nil {
				byName[h.name] = make([]uint64, w)
			}
			byName[h.name][word] |= bit
		}
		for s := range ix.dstSide {
			if m.dst.sides&(1<<s) != 0 {
				ix.dstSide[s][word] |= bit
			}
		}
		for _, p := range m.dst.addrs.v4 {
			dst4 = append(dst4, rulePrefix4{i, p})
		}
		for _, p := range m.dst.addrs.v6 {
			dst6 = append(dst6, rulePrefix6{i, p})
		}
	}
	ix.src.v4starts, ix.src.v4bits = build4(w, src4)
	ix.src.v6starts, ix.src.v6bits = build6(w, src6)
	ix.dst.v4starts, ix.dst.v4bits = build4(w, dst4)
	ix.dst.v6starts, ix.dst.v6bits = build6(w, dst6)
	return ix
}

type rulePrefix4 struct {
	rule int
	p    prefix4
}

type rulePrefix6 struct {
	rule int
	p    prefix6
}

// build4 cuts the IPv4 space at the first address of every prefix and the address after its
// last, and sets each rule's bit in the intervals its prefixes cover.
func build4(w int, ps []rulePrefix4) ([]uint32, []uint64) {
	if len(ps) == 0 {
		return nil, nil
	}
	starts := []uint32{0}
	for _, rp := range ps {
		first, last := rp.p.base, rp.p.base|^rp.p.mask
		starts = append(starts, first)
		if last != ^uint32(0) {
			starts = append(starts, last+1)
		}
	}
	slices.Sort(starts)
	starts = slices.Compact(starts)
	bitsets := make([]uint64, len(starts)*w)
	for _, rp := range ps {
		first, last := rp.p.base, rp.p.base|^rp.p.mask
		j, _ := slices.BinarySearch(starts, first)
		for ; j < len(starts) && starts[j] <= last; j++ {
			bitsets[j*w+rp.rule/64] |= 1 << (rp.rule % 64)
		}
	}
	return starts, bitsets
}

func build6(w int, ps []rulePrefix6) ([]u128, []uint64) {
	if len(ps) == 0 {
		return nil, nil
	}
	starts := []u128{{}}
	for _, rp := range ps {
		first := u128{rp.p.hi, rp.p.lo}
		last := u128{rp.p.hi | ^rp.p.mhi, rp.p.lo | ^rp.p.mlo}
		starts = append(starts, first)
		if last != (u128{^uint64(0), ^uint64(0)}) {
			starts = append(starts, last.next())
		}
	}
	slices.SortFunc(starts, u128.cmp)
	starts = slices.Compact(starts)
	bitsets := make([]uint64, len(starts)*w)
	for _, rp := range ps {
		first := u128{rp.p.hi, rp.p.lo}
		last := u128{rp.p.hi | ^rp.p.mhi, rp.p.lo | ^rp.p.mlo}
		j, _ := slices.BinarySearchFunc(starts, first, u128.cmp)
		for ; j < len(starts) && starts[j].cmp(last) <= 0; j++ {
			bitsets[j*w+rp.rule/64] |= 1 << (rp.rule % 64)
		}
	}
	return starts, bitsets
}

// row returns the bit set of the interval holding k, or nil when no prefix of k's family
// exists.
func (s *span) row(k *ipKey, w int) []uint64 {
	switch k.family {
	case 4:
		if len(s.v4starts) == 0 {
			return nil
		}
		// The last start <= k.v4; starts[0] is 0, so there is one.
		lo, hi := 1, len(s.v4starts)
		for lo < hi {
			mid := int(uint(lo+hi) >> 1)
			if s.v4starts[mid] <= k.v4 {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		return s.v4bits[(lo-1)*w : lo*w]
	case 6:
		if len(s.v6starts) == 0 {
			return nil
		}
		a := u128{k.hi, k.lo}
		lo, hi := 1, len(s.v6starts)
		for lo < hi {
			mid := int(uint(lo+hi) >> 1)
			if st := s.v6starts[mid]; st.hi < a.hi || st.hi == a.hi && st.lo <= a.lo {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		return s.v6bits[(lo-1)*w : lo*w]
	}
	return nil
}

// first returns the number (from 0) of the first rule that matches, or -1. It resolves the
// destination only for the rules that method, transport and source left: host names, the
// costly part, are looked up only when such a rule has them.
func (ix *index) first(req *Request, k *keys) int {
	w := ix.words
	row := bits.TrailingZeros32(uint32(k.method))*transportBits + bits.TrailingZeros8(uint8(k.transport))
	mt := ix.mt[row*w : row*w+w]
	src := ix.src.row(&k.src, w)
	var cand [maxIndexedRules / 64]uint64
	var found, exact, wild bool
	for i := range mt {
		c := ix.srcAny[i]
		if src != nil {
			c |= src[i]
		}
		c &= mt[i]
		cand[i] = c
		found = found || c != 0
		exact = exact || c&ix.exactRules[i] != 0
		wild = wild || c&ix.wildRules[i] != 0
	}
	if !found {
		return -1
	}
	dst := ix.dst.row(&k.dst, w)
	var side, up []uint64
	switch req.DstSide {
	case Inside:
		side = ix.dstSide[0]
	case Outside:
		side = ix.dstSide[1]
	}
	if req.ToUpstream {
		up = ix.dstSide[2]
	}
	var hostBits [maxIndexedRules / 64]uint64
	hosts := (exact || wild) && ix.hostRows(k.host, exact, wild, hostBits[:w])
	for i, c := range cand[:w] {
		if c == 0 {
			continue
		}
		d := ix.dstAny[i]
		if hosts {
			d |= hostBits[i]
		}
		if dst != nil {
			d |= dst[i]
		}
		if side != nil {
			d |= side[i]
		}
		if up != nil {
			d |= up[i]
		}
		if c &= d; c != 0 {
			return i*64 + bits.TrailingZeros64(c)
		}
	}
	return -1
}

// hostRows ORs into out the rules whose dst host names match host (exact names, wildcards or
// both), and reports whether any did.
// The name is lowered on the stack (map lookups with string(bytes) keys do not allocate). Rule
// names are at most 253 characters, so of a longer host only the tail can match a wildcard.
func (ix *index) hostRows(host string, exact, wild bool, out []uint64) bool {
	if host == "" {
		return false
	}
	var buf [254]byte
	start := max(0, len(host)-len(buf))
	name := buf[:len(host)-start]
	for i := range name {
		name[i] = lowerASCII(host[start+i])
	}
	found := false
	or := func(row []uint64) {
		if row != nil {
			found = true
			for i := range out {
				out[i] |= row[i]
			}
		}
	}
	if exact && start == 0 && ix.exactLens.has(len(name)) {
		or(ix.hostExact[string(name)])
	}
	if wild {
		// Every proper parent: "a.b.example.com" looks up ".b.example.com", ".example.com", ".com".
		for i := range name {
			if name[i] == '.' && start+i > 0 && ix.wildLens.has(len(name)-i) {
				or(ix.hostWild[string(name[i:])])
			}
		}
	}
	return found
}

// scan is the rule-by-rule search, for rule sets too large to index.
func scan(ms []matcher, req *Request, k *keys) int {
	for i := range ms {
		if ms[i].match(req, k) {
			return i
		}
	}
	return -1
}
