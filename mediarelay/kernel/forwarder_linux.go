package kernel

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Config configures a [Forwarder].
type Config struct {
	// Rules is the most legs forwarded at once, Slots the number of counter slots (at least
	// Rules; a leg keeps its slot while it moves between the kernel and userspace).
	Rules, Slots int
	// InNetns runs fn on a thread in the network namespace whose interfaces the program
	// attaches to: attaching by interface index, and netlink sockets, take the namespace of the
	// calling thread. nil runs fn where it is called.
	InNetns func(fn func() error) error
}

// Forwarder is the kernel fast path: an eBPF program on the tc ingress hook (TCX) of the
// interfaces media arrives on, and the maps it reads (rules) and writes (counters).
//
// Nothing of it outlives the process: the program is attached through BPF links, which the
// kernel detaches when their last descriptor closes, as it does when the process dies; the
// maps and the program go with the last reference. [Open] leaves other processes' programs
// alone: another sipcar in the namespace keeps its fast path.
//
// All methods are safe for concurrent use.
type Forwarder struct {
	cfg    Config
	rules  *ebpf.Map
	counts *ebpf.Map
	mem    []byte // the counts map, memory-mapped: counters read without a system call
	prog   *ebpf.Program
	nl     *netlink.Handle

	mu     sync.Mutex // guards the following fields
	links  map[int]link.Link
	free   []uint32 // free counter slots
	closed bool

	// Route's answers, kept for RouteTTL: when many calls start together (or a standby takes
	// over) every leg asks, and many ask the same few questions (the way to the PBX, to the
	// router the phones are behind), each two netlink round trips of about 15 us.
	routeMu sync.Mutex // guards routes
	routes  map[routeQuery]routeAnswer
}

// RouteTTL is how long [Forwarder.Route] reuses its answer to a question. A rule keeps the
// interface it was made with anyway, until its leg's peer changes.
const RouteTTL = time.Second

// routeCacheMax bounds the routes kept; past it, the expired ones go, or else all.
const routeCacheMax = 4096

type routeQuery struct{ src, dst netip.Addr }

type routeAnswer struct {
	ifindex int
	err     error
	at      time.Time
}

// Open loads the program and creates its maps, in the namespace cfg.InNetns runs in. It fails,
// saying why, where the kernel or the process's privileges do not allow the fast path: the
// program needs CAP_BPF and CAP_NET_ADMIN (or root), and TCX (Linux 6.6).
func Open(cfg Config) (*Forwarder, error) {
	if cfg.Rules <= 0 || cfg.Slots < cfg.Rules {
		return nil, fmt.Errorf("kernel forwarder: %d rules, %d counter slots: want 0 < rules <= slots", cfg.Rules, cfg.Slots)
	}
	if cfg.InNetns == nil {
		cfg.InNetns = func(fn func() error) error { return fn() }
	}
	f := &Forwarder{cfg: cfg, links: map[int]link.Link{}, routes: map[routeQuery]routeAnswer{}}
	if err := f.open(); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (f *Forwarder) open() error {
	var err error
	f.rules, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sipcar_rules", Type: ebpf.Hash,
		KeySize: keySize, ValueSize: ruleSize, MaxEntries: uint32(f.cfg.Rules)})
	if err != nil {
		return fmt.Errorf("create the rules map: %w", explain(err))
	}
	f.counts, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sipcar_counts", Type: ebpf.Array,
		KeySize: 4, ValueSize: countsSize, MaxEntries: uint32(f.cfg.Slots), Flags: unix.BPF_F_MMAPABLE})
	if err != nil {
		return fmt.Errorf("create the counters map: %w", explain(err))
	}
	// The counters are read in place: cilium/ebpf's Memory copies through ReadAt, which is
	// as much as one system call per stream would cost at thousands of streams a sweep.
	f.mem, err = unix.Mmap(f.counts.FD(), 0, f.cfg.Slots*countsSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the counters: %w", err)
	}
	f.prog, err = ebpf.NewProgram(programSpec(f.rules, f.counts))
	if err != nil {
		return fmt.Errorf("load the program: %w", explain(err))
	}
	for i := f.cfg.Slots - 1; i >= 0; i-- {
		f.free = append(f.free, uint32(i))
	}
	return f.cfg.InNetns(func() error {
		f.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		// Attaching to the loopback interface (index 1 in every namespace) and detaching at
		// once shows whether TCX is there before a call needs it.
		l, err := link.AttachTCX(link.TCXOptions{Interface: 1, Program: f.prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach to tc ingress (TCX, Linux 6.6): %w", explain(err))
		}
		return l.Close()
	})
}

// explain adds what is missing to the kernel's terse errors.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w (needs CAP_BPF and CAP_NET_ADMIN)", err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%w (not supported by this kernel)", err)
	}
	return err
}

// Nothing of an earlier process needs removing: a TCX link that is not pinned (sipcar pins
// none) goes with the process that made it, a crash included. Detaching what another process
// attached would take a running sibling's fast path away.

type attachment struct {
	ifname string
	link   link.ID
}

// attachments finds the program, by its name, on the tc ingress of the namespace's interfaces.
func attachments(nl *netlink.Handle) ([]attachment, error) {
	links, err := nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []attachment
	for _, l := range links {
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			continue
		}
		for _, ap := range res.Programs {
			if id, ok := ap.LinkID(); ok && isOurs(ap.ID) {
				out = append(out, attachment{l.Attrs().Name, id})
			}
		}
	}
	return out, nil
}

// Attachments returns the interfaces of the calling thread's network namespace whose tc ingress
// runs the program: a running sipcar's, or what one left behind. For tests and diagnostics.
func Attachments() ([]string, error) {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer nl.Close()
	atts, err := attachments(nl)
	var names []string
	for _, a := range atts {
		names = append(names, a.ifname)
	}
	return names, err
}

func isOurs(id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer p.Close()
	info, err := p.Info()
	return err == nil && info.Name == ProgramName
}

// Route returns the interface packets from src to dst leave by, if the kernel can forward them
// there: a unicast route through an Ethernet interface. A destination on this host (a local
// route) or through an interface without link-layer addresses stays with userspace. The answer
// may be up to RouteTTL old.
func (f *Forwarder) Route(src, dst netip.Addr) (int, error) {
	q, now := routeQuery{src.Unmap(), dst.Unmap()}, time.Now()
	f.routeMu.Lock()
	defer f.routeMu.Unlock()
	if a, ok := f.routes[q]; ok && now.Sub(a.at) < RouteTTL {
		return a.ifindex, a.err
	}
	ifindex, err := f.route(src, dst)
	if len(f.routes) >= routeCacheMax {
		maps.DeleteFunc(f.routes, func(_ routeQuery, a routeAnswer) bool { return now.Sub(a.at) >= RouteTTL })
		if len(f.routes) >= routeCacheMax {
			clear(f.routes)
		}
	}
	f.routes[q] = routeAnswer{ifindex: ifindex, err: err, at: now}
	return ifindex, err
}

// route asks the kernel what Route answers.
func (f *Forwarder) route(src, dst netip.Addr) (int, error) {
	// The handle's socket was opened in the namespace: no need to enter it.
	routes, err := f.nl.RouteGetWithOptions(net.IP(dst.Unmap().AsSlice()), &netlink.RouteGetOptions{SrcAddr: net.IP(src.Unmap().AsSlice())})
	if err != nil {
		return 0, fmt.Errorf("route to %v from %v: %w", dst, src, err)
	}
	if len(routes) == 0 {
		return 0, fmt.Errorf("route to %v from %v: none", dst, src)
	}
	r := routes[0]
	if r.Type != unix.RTN_UNICAST {
		return 0, fmt.Errorf("route to %v from %v: type %d, not unicast", dst, src, r.Type)
	}
	l, err := f.nl.LinkByIndex(r.LinkIndex)
	if err != nil {
		return 0, fmt.Errorf("route to %v from %v: interface %d: %w", dst, src, r.LinkIndex, err)
	}
	if a := l.Attrs(); a.EncapType != "ether" {
		return 0, fmt.Errorf("route to %v from %v: interface %s is %s, not Ethernet", dst, src, a.Name, a.EncapType)
	}
	return r.LinkIndex, nil
}

// Attach attaches the program to the tc ingress of interface ifindex, unless it is attached
// already. The attachment lasts until Close, or until the interface goes.
func (f *Forwarder) Attach(ifindex int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("kernel forwarder closed")
	}
	if _, ok := f.links[ifindex]; ok {
		return nil
	}
	var l link.Link
	err := f.cfg.InNetns(func() (err error) {
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: f.prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		return fmt.Errorf("attach to interface %d: %w", ifindex, explain(err))
	}
	f.links[ifindex] = l
	return nil
}

// Attached returns the interfaces the program is attached to.
func (f *Forwarder) Attached() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]int, 0, len(f.links))
	for i := range f.links {
		out = append(out, i)
	}
	return out
}

// AllocSlot takes a free counter slot, zeroed; false when none is left.
func (f *Forwarder) AllocSlot() (uint32, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || len(f.free) == 0 {
		return 0, false
	}
	s := f.free[len(f.free)-1]
	f.free = f.free[:len(f.free)-1]
	return s, true
}

// FreeSlot zeroes a slot and gives it back. No rule may name it any more, and none may have
// for longer than a packet takes through the program.
func (f *Forwarder) FreeSlot(slot uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || int(slot) >= f.cfg.Slots {
		return
	}
	c := f.slot(slot)
	atomic.StoreUint64(&c.Packets, 0)
	atomic.StoreUint64(&c.Bytes, 0)
	atomic.StoreUint64(&c.LastNs, 0)
	f.free = append(f.free, slot)
}

// Counts returns what the kernel counted in a slot. It makes no system call.
func (f *Forwarder) Counts(slot uint32) Counts {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || int(slot) >= f.cfg.Slots {
		return Counts{}
	}
	c := f.slot(slot)
	// The program adds with atomic instructions; aligned 8-byte loads see each counter whole.
	return Counts{Packets: atomic.LoadUint64(&c.Packets), Bytes: atomic.LoadUint64(&c.Bytes), LastNs: atomic.LoadUint64(&c.LastNs)}
}

func (f *Forwarder) slot(slot uint32) *Counts {
	return (*Counts)(unsafe.Pointer(&f.mem[int(slot)*countsSize]))
}

// Apply puts and deletes rules in one batch each (a system call each, however many rules): a
// put replaces the rule of its key, if any; deleting a key without a rule is not an error.
func (f *Forwarder) Apply(putKeys []Key, putRules []Rule, del []Key) error {
	if len(putKeys) != len(putRules) {
		return fmt.Errorf("apply: %d keys for %d rules", len(putKeys), len(putRules))
	}
	var errs []error
	for len(del) > 0 {
		n, err := f.rules.BatchDelete(del, nil)
		if err == nil {
			break
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) || n >= len(del) {
			errs = append(errs, fmt.Errorf("delete %d rules: %w", len(del), err))
			break
		}
		del = del[n+1:] // the batch stops at a key without a rule
	}
	if len(putKeys) > 0 {
		if _, err := f.rules.BatchUpdate(putKeys, putRules, nil); err != nil {
			errs = append(errs, fmt.Errorf("put %d rules: %w", len(putKeys), err))
		}
	}
	return errors.Join(errs...)
}

// Rules returns every rule in the kernel, for tests and diagnostics.
func (f *Forwarder) Rules() (map[Key]Rule, error) {
	out := map[Key]Rule{}
	var k Key
	var r Rule
	it := f.rules.Iterate()
	for it.Next(&k, &r) {
		out[k] = r
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	return out, nil
}

// Close detaches the program from every interface and releases the maps. Packets then take
// the path they took without it. It is safe to call more than once.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	var errs []error
	for i, l := range f.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from interface %d: %w", i, err))
		}
	}
	f.links = nil
	if f.prog != nil {
		f.prog.Close()
	}
	if f.mem != nil {
		_ = unix.Munmap(f.mem)
		f.mem = nil
	}
	for _, m := range []*ebpf.Map{f.rules, f.counts} {
		if m != nil {
			m.Close()
		}
	}
	if f.nl != nil {
		f.nl.Close()
	}
	return errors.Join(errs...)
}
