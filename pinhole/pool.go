package pinhole

import (
	"math/rand/v2"
	"sync"
)

// pool hands out slots of a port range in random order: a slot is one port (sip) or an even
// port and the odd one above it (media). Free slots sit in a slice; taking swaps a random one
// with the last, so taking and returning are O(1) and every free slot is equally likely.
type pool struct {
	first uint16 // port of slot 0
	step  uint16 // ports per slot: 1 or 2
	slots int

	mu   sync.Mutex // guards the following
	free []int32
	// at is each slot's index in free, or -1 while it is taken, so that a given slot can be
	// taken at once (takeSlots).
	at   []int32
	rand *lockedRand
}

func newPool(r PortRange, step uint16, rnd *lockedRand) *pool {
	p := &pool{first: r.First, step: step, rand: rnd}
	if step == 2 {
		p.first += r.First % 2
		p.slots = mediaSlots(r)
	} else {
		p.slots = r.Len()
	}
	p.free = make([]int32, p.slots)
	p.at = make([]int32, p.slots)
	for i := range p.free {
		p.free[i] = int32(i)
		p.at[i] = int32(i)
	}
	return p
}

func (p *pool) port(slot int32) uint16 { return p.first + uint16(slot)*p.step }

// take removes a random free slot.
func (p *pool) take() (slot int32, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.free)
	if n == 0 {
		return 0, false
	}
	slot = p.free[p.rand.intN(n)]
	p.removeLocked(slot)
	return slot, true
}

// removeLocked takes a free slot out of the free list: the last one takes its place.
func (p *pool) removeLocked(slot int32) {
	i, last := p.at[slot], int32(len(p.free)-1)
	moved := p.free[last]
	p.free[i] = moved
	p.at[moved] = i
	p.free = p.free[:last]
	p.at[slot] = -1
}

// put returns a slot taken before.
func (p *pool) put(slot int32) {
	p.mu.Lock()
	p.at[slot] = int32(len(p.free))
	p.free = append(p.free, slot)
	p.mu.Unlock()
}

// usage returns the numbers of slots free and in use.
func (p *pool) usage() (free, used int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free), p.slots - len(p.free)
}

// lockedRand is a random source safe for concurrent use. Without an injected source it uses the
// runtime's, which is seeded per process from the system's entropy.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedRand) intN(n int) int {
	if l == nil || l.r == nil {
		return rand.IntN(n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}

// takeSlots removes the given slots from the free ones, all or none: false when one is not free
// (or named twice). It restores a replica's bindings on their own ports.
func (p *pool) takeSlots(slots ...int32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, s := range slots {
		if s < 0 || int(s) >= p.slots || p.at[s] < 0 {
			for _, t := range slots[:i] {
				p.at[t] = int32(len(p.free))
				p.free = append(p.free, t)
			}
			return false
		}
		p.removeLocked(s)
	}
	return true
}
