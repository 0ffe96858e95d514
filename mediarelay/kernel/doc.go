// Package kernel is sipcar's kernel fast path for media: an eBPF program on the tc ingress hook
// of the interfaces media arrives on forwards the RTP of legs that userspace has latched,
// rewriting addresses and ports (a NAT per leg, keyed by the latched source), counting packets
// and payload bytes per leg, and sending through the kernel's neighbour table, without a
// kernel module and without the packets reaching userspace.
//
// It is the mechanism only; package mediarelay decides which legs go there and when:
//
//	f, _ := kernel.Open(kernel.Config{Rules: n, Slots: n, InNetns: ns.do}) // load, probe TCX
//	slot, _ := f.AllocSlot()                                                // a leg's counters
//	k := kernel.NewKey(relayPort, latchedPeer)                              // what matches
//	r := kernel.NewRule(k, otherRelayPort, otherPeer, mux, ifindexOut, slot) // what it becomes
//	f.Attach(ifindexIn)                                                     // where it arrives
//	f.Apply([]kernel.Key{k}, []kernel.Rule{r}, nil)                          // one batch
//	c := f.Counts(slot)                                                      // no system call
//	f.Apply(nil, nil, []kernel.Key{k}); f.FreeSlot(slot); f.Close()
//
// The program is assembled at run time with cilium/ebpf's asm package: no compiled object is
// kept in the repository and building sipcar needs no C compiler. It is attached through TCX
// links (Linux 6.6), which the kernel detaches when the process exits or dies: nothing of it
// outlives sipcar, and another sipcar's program in the namespace is left alone.
//
// Why tc and eBPF, not nftables: the kernels sipcar runs on may lack nftables flowtables (this
// project's test machines do), so nftables would forward through conntrack, NAT and the whole
// forwarding path, for about the same CPU per packet as this program (integration/bench's
// fifth session, a loaded machine: 1.2-2.1 us per packet here, 1.5-1.6 us for plain nftables
// DNAT+SNAT, 4.6-5.2 us for userspace fan-in); a NAT binding lives in conntrack
// until its entry expires, so handing a flow from userspace to nftables or back would need
// conntrack entries flushed at each change; and nftables' counters count IP bytes per rule,
// not UDP payload per leg. Why tc and not XDP: a packet for sipcar may arrive through a bridge
// (a Docker host's), where XDP does not run, and bpf_redirect_neigh, which resolves the next
// hop like a socket's send, is a tc helper.
//
// What the program leaves to userspace: packets from any source but the latched one (userspace
// drops and counts them), RTCP on a muxed leg, IPv4 with options or fragmented, IPv6 with
// extension headers, VLAN-tagged frames, GRO aggregates, and datagrams whose UDP length
// disagrees with the IP length. It does not verify the IP header or UDP checksums: a corrupt
// packet from the latched peer is forwarded (and counted) with its checksum still wrong, where
// userspace's socket would not have received it.
package kernel
