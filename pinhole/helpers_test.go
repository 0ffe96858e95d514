package pinhole

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"sync"
	"syscall"
	"testing"
)

// Test addresses: sipcar inside 198.18.0.1, public 198.51.100.1; phones inside 198.18.0.0/24,
// peers outside 203.0.113.0/24. The tables are data here: fakeReserve binds nothing.
var (
	testInside = Addrs{IPv4: netip.MustParseAddr("198.18.0.1"), IPv6: netip.MustParseAddr("2001:db8:a::1")}
	testPublic = Addrs{IPv4: netip.MustParseAddr("198.51.100.1"), IPv6: netip.MustParseAddr("2001:db8:b::1")}
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// fakeReserve stands for the host's port table: it refuses a port already held or one fail
// names, and tracks what is open so that a test can prove every reservation was closed once.
type fakeReserve struct {
	t    testing.TB
	mu   sync.Mutex
	open map[string]bool
	fail func(network string, addr netip.AddrPort) bool
	// failErr is the error a refused reservation wraps (default EADDRINUSE).
	failErr error
	n       int // reservations made
	tries   int // reservations asked for
}

func newFakeReserve(t testing.TB) *fakeReserve {
	return &fakeReserve{t: t, open: make(map[string]bool)}
}

func (f *fakeReserve) reserve(network string, addr netip.AddrPort) (io.Closer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	key := network + " " + addr.String()
	if f.open[key] || (f.fail != nil && f.fail(network, addr)) {
		err := f.failErr
		if err == nil {
			err = syscall.EADDRINUSE
		}
		return nil, fmt.Errorf("bind %s: %w", key, err)
	}
	f.open[key] = true
	f.n++
	return &fakeHold{f: f, key: key}, nil
}

func (f *fakeReserve) held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.open)
}

func (f *fakeReserve) isHeld(network string, a netip.AddrPort) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open[network+" "+a.String()]
}

type fakeHold struct {
	f      *fakeReserve
	key    string
	closed bool
}

func (h *fakeHold) Close() error {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	if h.closed {
		h.f.t.Errorf("reservation %s closed twice", h.key)
		return errors.New("closed twice")
	}
	h.closed = true
	delete(h.f.open, h.key)
	return nil
}

// nopReserve holds nothing and allocates nothing: for benchmarks of the Map alone.
func nopReserve(string, netip.AddrPort) (io.Closer, error) { return nopCloser{}, nil }

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// zeroSource makes IntN(n) return 0 when n is a power of two (and loop forever otherwise, so use
// it only with ranges of one or two slots): the pool then hands out slot 0, then the last, ...,
// a fixed order that golden tests need.
type zeroSource struct{}

func (zeroSource) Uint64() uint64 { return 0 }

// releases records OnRelease calls.
type releases struct {
	mu  sync.Mutex
	got map[Reason]int
	log []string
}

func (r *releases) record(b *Binding, why Reason) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = make(map[Reason]int)
	}
	r.got[why]++
	r.log = append(r.log, fmt.Sprintf("%s %v %s", b.Type(), b.Address(), why))
	if b.Live() {
		panic("OnRelease of a live binding")
	}
}

func (r *releases) count(why Reason) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[why]
}

// newTestMap returns a Map with test addresses and a fakeReserve, and closes it at the end.
func newTestMap(t testing.TB, cfg Config) (*Map, *fakeReserve) {
	t.Helper()
	f := newFakeReserve(t)
	if cfg.Inside == (Addrs{}) {
		cfg.Inside = testInside
	}
	if cfg.Public == (Addrs{}) {
		cfg.Public = testPublic
	}
	if cfg.ReserveMedia == nil {
		cfg.ReserveMedia = f.reserve
	}
	if cfg.ReserveSignaling == nil {
		cfg.ReserveSignaling = f.reserve
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m, f
}

// offer allocates the pair of one stream from side from in its own transaction.
func offer(t testing.TB, m *Map, callID string, from Side, rtp string) Pair {
	t.Helper()
	tx := m.Begin(callID, netip.Addr{})
	defer tx.Rollback()
	p, err := tx.Media(MediaRequest{From: from, RTP: ap(rtp)})
	if err != nil {
		t.Fatalf("Media(%s %s): %v", from, rtp, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return p
}

// assertEmpty checks that the Map holds nothing: no binding, no call, every port free.
func assertEmpty(t testing.TB, m *Map, f *fakeReserve) {
	t.Helper()
	s := m.Snapshot()
	if len(s.Bindings) != 0 || s.Calls != 0 {
		t.Errorf("map not empty: %d bindings, %d calls", len(s.Bindings), s.Calls)
	}
	if s.MediaPorts.InUse != 0 || s.SignalingPorts.InUse != 0 {
		t.Errorf("ports in use: media %d, signaling %d", s.MediaPorts.InUse, s.SignalingPorts.InUse)
	}
	if want := mediaSlots(m.cfg.MediaPorts) * 2; s.MediaPorts.Free != want {
		t.Errorf("media ports free = %d, want %d", s.MediaPorts.Free, want)
	}
	if f != nil && f.held() != 0 {
		t.Errorf("%d reservations still open", f.held())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sigs) != 0 || len(m.calls) != 0 || len(m.perSource) != 0 || len(m.queue) != 0 {
		t.Errorf("tables not empty: sigs %d calls %d perSource %d queue %d", len(m.sigs), len(m.calls), len(m.perSource), len(m.queue))
	}
	for i := range m.mediaPorts {
		if m.mediaPorts[i].Load() != nil {
			t.Errorf("media port %d still indexed", int(m.cfg.MediaPorts.First)+i)
		}
	}
	for i := range m.sigPorts {
		if m.sigPorts[i].Load() != nil {
			t.Errorf("signaling port %d still indexed", int(m.cfg.SignalingPorts.First)+i)
		}
	}
}

var _ rand.Source = zeroSource{}
