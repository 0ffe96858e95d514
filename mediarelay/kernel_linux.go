package mediarelay

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/kernel"
)

// What the kernel path takes, and when.
//
// A leg's RTP goes to the kernel once the leg's RTP port has latched its peer for good
// (latchFinal: from then on, only that source is the peer's) and the other leg's peer is
// known and not in a learning window; the stream must not be on hold. The kernel then
// forwards packets from that source to that port, and nothing else: packets from any other
// source still reach userspace, which drops and counts them (RTP bleed). RTCP ports stay in
// userspace (a packet every few seconds, and what quality reports are made of); on a muxed
// leg, the program leaves RTCP to userspace too. A packet the program cannot handle (IPv4
// options, fragments, VLAN tags, GRO aggregates) also goes on to userspace, which forwards it
// as before.
//
// The kernel state of a stream follows it at once: UpdateStream re-examines the stream
// (a new SDP address relearns the leg, and takes its rule away in the same call; hold takes
// every rule away), RemoveStream deletes its rules. A leg that a packet (or Latch) latches for
// good wakes the housekeeping goroutine, which hands the stream over at once: until then every
// packet of the stream crosses userspace, and when many calls start together (a burst, a
// standby taking over) that is more than userspace can take. A latch that becomes final when
// its window ends is handed over by the sweep that ended it. Every change is one batch of map
// updates.
//
// Counters: the program counts each leg's packets and payload bytes in the leg's counter slot,
// which the leg keeps from its first hand-over until the stream is removed (a sweep later, the
// slot's counts are folded into the leg and the slot freed). Stats adds them to userspace's:
// packet and byte counts are exact; sequence-based figures (Lost, Jitter, SSRC) only see what
// userspace saw (LegStats.Kernel says so).

// kernelPath is the relay's side of the kernel fast path.
type kernelPath struct {
	f   *kernel.Forwarder
	log *slog.Logger
	// apply is f.Apply; tests make the kernel refuse a batch through it. retry is kernelRetry.
	apply func(putKeys []kernel.Key, putRules []kernel.Rule, del []kernel.Key) error
	retry time.Duration
	// wake tells the housekeeping goroutine that a stream has a leg newly latched for good
	// (Stream.handover); one pending wake stands for any number of them.
	wake chan struct{}

	mu        sync.Mutex // guards the following fields and every endpoint's kern; after Relay.mu
	installed map[kernel.Key]*endpoint
	slotted   map[*endpoint]struct{} // endpoints holding a counter slot
	retiring  []*endpoint            // of removed streams, their slots to be freed
	retired   uint64                 // packets counted in slots since freed
	// stale holds rules the relay took away whose deletion from the kernel failed: each sweep
	// deletes them again, for a rule left behind would forward for a leg that is gone.
	stale  map[kernel.Key]struct{}
	closed bool
}

// kernelLeg is the kernel path's state of an endpoint. kernelPath.mu guards it, except kp,
// which Stats and the idle timer load without the lock to find the lock.
type kernelLeg struct {
	kp      atomic.Pointer[kernelPath] // set with the first slot; nil: never in the kernel
	slot    uint32
	hasSlot bool
	on      bool // a rule is installed: key -> rule
	key     kernel.Key
	rule    kernel.Rule
	inIf    int           // the interface the peer's packets arrive by
	final   kernel.Counts // what the freed slot had counted
	gone    time.Time     // when the stream was removed; the slot is freed a sweep later
	// failed remembers the last hand-over that failed, so that a leg the kernel cannot take is
	// not retried every sweep: the key and destination it was tried with, why, and when (it is
	// tried again kernelRetry later, for the cause may pass: a route, a full map).
	failedKey kernel.Key
	failedTo  netip.AddrPort
	failed    string
	failedAt  time.Time
}

// kernelRetry is how long a leg whose hand-over failed stays in userspace before the next try.
const kernelRetry = 30 * time.Second

// slotGrace is how long a removed leg's counter slot stays before it is freed: far longer than a
// packet takes through the program, which may still count in it after its rule went.
const slotGrace = 100 * time.Millisecond

// openKernel sets the kernel path up as cfg.Kernel asks.
func (r *Relay) openKernel() error {
	if r.cfg.Kernel == KernelOff {
		r.kernWhy = "SIPCAR_MEDIA_KERNEL=off"
		return nil
	}
	n := len(r.ports)
	f, err := kernel.Open(kernel.Config{Rules: n, Slots: n, InNetns: r.ns.do})
	if err != nil {
		if r.cfg.Kernel == KernelOn {
			return fmt.Errorf("mediarelay kernel path: %w", err)
		}
		r.kernWhy = err.Error()
		r.log.Warn("mediarelay: no kernel fast path: latched media stays in userspace", "reason", err)
		return nil
	}
	r.kern = &kernelPath{f: f, log: r.log, apply: f.Apply, retry: kernelRetry, wake: make(chan struct{}, 1),
		installed: map[kernel.Key]*endpoint{}, slotted: map[*endpoint]struct{}{}, stale: map[kernel.Key]struct{}{}}
	r.kernWhy = "eBPF on tc ingress (TCX)"
	r.log.Info("mediarelay: kernel fast path: latched RTP legs are forwarded by an eBPF program on tc ingress", "rules", n)
	return nil
}

// KernelPath reports whether the kernel fast path is in use, and why (not).
func (r *Relay) KernelPath() (bool, string) { return r.kern != nil, r.kernWhy }

func (r *Relay) closeKernel() error {
	if r.kern == nil {
		return nil
	}
	r.kern.mu.Lock()
	defer r.kern.mu.Unlock()
	// Fold what the kernel counted into the legs, so that Stats stays right after Close.
	for e := range r.kern.slotted {
		r.kern.freeSlotLocked(e, false)
	}
	for _, e := range r.kern.installed {
		e.kern.on = false
	}
	r.kern.installed = map[kernel.Key]*endpoint{}
	r.kern.retiring = nil
	r.kern.closed = true
	if err := r.kern.f.Close(); err != nil {
		return fmt.Errorf("mediarelay kernel path: %w", err)
	}
	return nil
}

// kernelChange is a batch of rule changes.
type kernelChange struct {
	putKeys  []kernel.Key
	putRules []kernel.Rule
	del      []kernel.Key
}

// latchedFinal marks e's stream for the hand-over pass and wakes the housekeeping goroutine
// for it, without waiting: e has just latched its peer for good. The packet path (at most once
// per endpoint and latch) and Latch call it.
func (r *Relay) latchedFinal(e *endpoint) {
	kp := r.kern
	if kp == nil || e.rtcp {
		return
	}
	e.stream.handover.Store(true)
	select {
	case kp.wake <- struct{}{}:
	default: // a wake is pending: its pass takes this stream too
	}
}

// kernelWake is what the housekeeping goroutine waits on for a hand-over pass; nil (never
// ready) without the kernel path.
func (r *Relay) kernelWake() <-chan struct{} {
	if r.kern == nil {
		return nil
	}
	return r.kern.wake
}

// kernelSync hands the stream's legs to the kernel, changes their rules or takes them back, as
// the stream's state now says, in one batch (none when nothing changed, the steady state).
func (r *Relay) kernelSync(s *Stream, now time.Time) {
	kp := r.kern
	if kp == nil {
		return
	}
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.closed {
		return
	}
	var ch kernelChange
	removed := s.removed.Load()
	for _, e := range s.eps {
		if e == nil || e.rtcp {
			continue
		}
		k := &e.kern
		key, rule, ok := kp.wantLocked(s, e, removed, now)
		switch {
		case !ok && k.on:
			ch.del = append(ch.del, k.key)
			delete(kp.installed, k.key)
			k.on = false
		case ok && k.on && k.key == key && k.rule == rule:
		case ok:
			if k.on && k.key != key {
				ch.del = append(ch.del, k.key)
				delete(kp.installed, k.key)
			}
			ch.putKeys = append(ch.putKeys, key)
			ch.putRules = append(ch.putRules, rule)
			kp.installed[key] = e
			k.on, k.key, k.rule = true, key, rule
		}
		if removed && k.hasSlot && k.gone.IsZero() {
			k.gone = now
			kp.retiring = append(kp.retiring, e)
		}
	}
	if len(ch.del)+len(ch.putKeys) == 0 {
		return
	}
	if err := kp.apply(ch.putKeys, ch.putRules, ch.del); err != nil {
		kp.log.Warn("mediarelay: kernel rules of a stream not applied: its legs stay in userspace", "call", s.callID, "err", err)
		// What went in is taken out again, and what was to go is deleted again, so that the
		// kernel has nothing the relay does not know of; what still fails, the sweep retries.
		undo := ch.del
		for _, e := range s.eps {
			if e != nil && e.kern.on {
				undo = append(undo, e.kern.key)
				delete(kp.installed, e.kern.key)
				e.kern.on = false
				_, to := e.kern.rule.Endpoints(e.kern.key)
				e.kern.failed, e.kern.failedKey, e.kern.failedTo, e.kern.failedAt = err.Error(), e.kern.key, to, now
			}
		}
		if err := kp.apply(nil, nil, undo); err != nil {
			for _, k := range undo {
				kp.stale[k] = struct{}{}
			}
			kp.log.Warn("mediarelay: kernel rules not deleted; retried at each sweep", "call", s.callID, "rules", len(undo), "err", err)
		}
	}
}

// deleteStaleLocked deletes again the rules whose deletion failed, unless a leg holds the key
// again (its rule replaced the stale one).
func (kp *kernelPath) deleteStaleLocked() {
	if len(kp.stale) == 0 {
		return
	}
	var keys []kernel.Key
	for k := range kp.stale {
		if kp.installed[k] == nil {
			keys = append(keys, k)
		}
	}
	if err := kp.apply(nil, nil, keys); err != nil {
		kp.log.Debug("mediarelay: stale kernel rules still not deleted", "rules", len(keys), "err", err)
		return
	}
	clear(kp.stale)
}

// wantLocked returns the rule endpoint e should have, if any.
func (kp *kernelPath) wantLocked(s *Stream, e *endpoint, removed bool, now time.Time) (kernel.Key, kernel.Rule, bool) {
	if removed || s.hold.Load() {
		return kernel.Key{}, kernel.Rule{}, false
	}
	p := e.peer.Load()
	if p.state != latchFinal {
		return kernel.Key{}, kernel.Rule{}, false
	}
	out := e.outRTP
	q := out.peer.Load()
	// Only toward a peer whose latch is final: one not heard from yet may answer from another
	// address (a NAT), which userspace follows at once and a rule only at the next sweep.
	var to netip.AddrPort
	if q.state == latchFinal {
		to = q.addr
	}
	if !to.IsValid() {
		return kernel.Key{}, kernel.Rule{}, false
	}
	if v4 := e.local.Addr().Unmap().Is4(); out.local.Addr().Unmap().Is4() != v4 || to.Addr().Unmap().Is4() != v4 {
		// A leg of each family (an IPv6 phone, an IPv4 PBX): the program rewrites addresses in
		// place and cannot change the IP version. Userspace relays it.
		return kernel.Key{}, kernel.Rule{}, false
	}
	key := kernel.NewKey(e.local, p.addr)
	k := &e.kern
	from, oldTo := k.rule.Endpoints(k.key)
	if k.on && k.key == key && oldTo == to && from == out.local {
		return k.key, k.rule, true // the steady state
	}
	if other := kp.installed[key]; other != nil && other != e {
		return kernel.Key{}, kernel.Rule{}, false // a fork latched on the same source: userspace tells them apart
	}
	if k.failed != "" && k.failedKey == key && k.failedTo == to && now.Sub(k.failedAt) < kp.retry {
		return kernel.Key{}, kernel.Rule{}, false
	}
	fail := func(err error) (kernel.Key, kernel.Rule, bool) {
		k.failed, k.failedKey, k.failedTo, k.failedAt = err.Error(), key, to, now
		kp.log.Debug("mediarelay: leg stays in userspace", "call", s.callID, "port", e.local, "peer", p.addr, "to", to, "reason", err)
		return kernel.Key{}, kernel.Rule{}, false
	}
	ifindex := int(k.rule.Ifindex)
	if !k.on || oldTo != to || from != out.local {
		var err error
		if ifindex, err = kp.f.Route(out.local.Addr(), to.Addr()); err != nil {
			return fail(err)
		}
	}
	if !k.on || k.key != key {
		// The peer's packets arrive by the interface the route back to it leaves by.
		in, err := kp.f.Route(e.local.Addr(), p.addr.Addr())
		if err != nil {
			return fail(err)
		}
		if err := kp.f.Attach(in); err != nil {
			return fail(err)
		}
		k.inIf = in
	}
	if !k.hasSlot {
		slot, ok := kp.f.AllocSlot()
		if !ok {
			return fail(errors.New("no counter slot left"))
		}
		k.kp.Store(kp)
		k.slot, k.hasSlot = slot, true
		kp.slotted[e] = struct{}{}
	}
	k.failed = ""
	return key, kernel.NewRule(key, out.local, to, e.mux, ifindex, k.slot), true
}

// kernelSweep deletes the rules whose deletion failed before and frees the counter slots of
// legs removed long enough ago. The housekeeping sweep calls it first.
func (r *Relay) kernelSweep(now time.Time) {
	kp := r.kern
	if kp == nil {
		return
	}
	kp.mu.Lock()
	defer kp.mu.Unlock()
	kp.deleteStaleLocked()
	keep := kp.retiring[:0]
	for _, e := range kp.retiring {
		if now.Sub(e.kern.gone) < slotGrace {
			keep = append(keep, e)
			continue
		}
		kp.freeSlotLocked(e, true)
	}
	clear(kp.retiring[len(keep):])
	kp.retiring = keep
}

// freeSlotLocked folds what e's slot counted into e and, if free, gives the slot back.
func (kp *kernelPath) freeSlotLocked(e *endpoint, free bool) {
	k := &e.kern
	if !k.hasSlot {
		return
	}
	c := kp.f.Counts(k.slot)
	k.final.Packets += c.Packets
	k.final.Bytes += c.Bytes
	k.final.LastNs = max(k.final.LastNs, c.LastNs)
	kp.retired += c.Packets
	if free {
		kp.f.FreeSlot(k.slot)
	}
	k.hasSlot = false
	delete(kp.slotted, e)
}

// kernelCounts returns what the kernel forwarded for endpoint e, and whether a rule is
// installed for it now.
func (e *endpoint) kernelCounts() (kernel.Counts, bool) {
	k := &e.kern
	kp := k.kp.Load()
	if kp == nil {
		return kernel.Counts{}, false
	}
	kp.mu.Lock()
	defer kp.mu.Unlock()
	c := k.final
	if k.hasSlot {
		live := kp.f.Counts(k.slot)
		c.Packets += live.Packets
		c.Bytes += live.Bytes
		c.LastNs = max(c.LastNs, live.LastNs)
	}
	return c, k.on
}

// addKernelStats adds what the kernel forwarded to a stream's snapshot: packets that arrived
// at a leg's RTP port and left by the other leg's.
func (s *Stream) addKernelStats(st *StreamStats) {
	for _, e := range s.eps {
		if e == nil || e.rtcp {
			continue
		}
		c, on := e.kernelCounts()
		if c.Packets == 0 && !on {
			continue
		}
		in, out := &st.A, &st.B
		if e.leg == LegB {
			in, out = &st.B, &st.A
		}
		in.Kernel = in.Kernel || on
		in.KernelPackets += c.Packets
		in.RTP.Packets += c.Packets
		in.RTP.Bytes += c.Bytes
		out.Sent.Packets += c.Packets
		out.Sent.Bytes += c.Bytes
		if c.LastNs > 0 {
			if t := monoToWall(c.LastNs); t.After(in.LastPacket) {
				in.LastPacket = t
			}
		}
	}
}

// monoToWall converts a CLOCK_MONOTONIC time (bpf_ktime_get_ns) to wall time.
func monoToWall(ns uint64) time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}
	}
	return time.Now().Add(-time.Duration(uint64(ts.Nano()) - ns))
}

// kernelActivity returns the packets the kernel forwarded for e: housekeeping's idle timer
// counts them as activity.
func (e *endpoint) kernelActivity() uint64 {
	if e.kern.kp.Load() == nil {
		return 0
	}
	c, _ := e.kernelCounts()
	return c.Packets
}

// kernelForwarded returns the packets the kernel forwarded, over every stream.
func (r *Relay) kernelForwarded() uint64 {
	kp := r.kern
	if kp == nil {
		return 0
	}
	kp.mu.Lock()
	defer kp.mu.Unlock()
	n := kp.retired
	for e := range kp.slotted {
		n += kp.f.Counts(e.kern.slot).Packets
	}
	return n
}

// KernelRules returns the rules the kernel holds, for tests and diagnostics: the legs it
// forwards, each as its relay port and latched peer, and where their packets go.
func (r *Relay) KernelRules() (map[kernel.Key]kernel.Rule, error) {
	if r.kern == nil {
		return nil, nil
	}
	return r.kern.f.Rules()
}

// kernelStreams counts the streams with at least one leg in the kernel.
func (r *Relay) kernelStreams(streams []*Stream) int {
	kp := r.kern
	if kp == nil {
		return 0
	}
	kp.mu.Lock()
	defer kp.mu.Unlock()
	n := 0
	for _, s := range streams {
		for _, e := range s.eps {
			if e != nil && e.kern.on {
				n++
				break
			}
		}
	}
	return n
}

// kernelDescs are the kernel path's metrics, part of [Collector].
type kernelDescs struct {
	pathStreams, forwarded, on *prometheus.Desc
}

func newKernelDescs(d func(name, help string, labels ...string) *prometheus.Desc) kernelDescs {
	return kernelDescs{
		pathStreams: d("path_streams", "Media streams being relayed, by the path their RTP takes: kernel (at least one leg handed to the kernel fast path) or userspace.", "path"),
		forwarded:   d("kernel_packets_forwarded_total", "RTP packets the kernel fast path forwarded (part of packets_forwarded_total)."),
		on:          d("kernel_path", "1 if latched legs are handed to the kernel fast path, else 0; mode is SIPCAR_MEDIA_KERNEL.", "mode"),
	}
}

func (k kernelDescs) describe(ch chan<- *prometheus.Desc) {
	ch <- k.pathStreams
	ch <- k.forwarded
	ch <- k.on
}

func (k kernelDescs) collect(ch chan<- prometheus.Metric, r *Relay, streams []*Stream, cs Counters) {
	inKernel := r.kernelStreams(streams)
	ch <- prometheus.MustNewConstMetric(k.pathStreams, prometheus.GaugeValue, float64(inKernel), "kernel")
	ch <- prometheus.MustNewConstMetric(k.pathStreams, prometheus.GaugeValue, float64(len(streams)-inKernel), "userspace")
	ch <- prometheus.MustNewConstMetric(k.forwarded, prometheus.CounterValue, float64(cs.Kernel))
	on := 0.0
	if r.kern != nil {
		on = 1
	}
	ch <- prometheus.MustNewConstMetric(k.on, prometheus.GaugeValue, on, r.cfg.Kernel.String())
}
