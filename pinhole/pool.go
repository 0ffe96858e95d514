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
	for i := range p.free {
		p.free[i] = int32(i)
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
	i := p.rand.intN(n)
	slot = p.free[i]
	p.free[i] = p.free[n-1]
	p.free = p.free[:n-1]
	return slot, true
}

// put returns a slot taken before.
func (p *pool) put(slot int32) {
	p.mu.Lock()
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
