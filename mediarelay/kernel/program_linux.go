package kernel

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The program is written here in eBPF assembly and loaded at run time, so that no compiled
// object is kept in the repository and no compiler is needed to build sipcar. What it does, per
// packet arriving on an interface it is attached to (tc ingress, before netfilter and routing):
//
//  1. Untagged Ethernet, IPv4 without options and not a fragment, or IPv6 whose next header is
//     UDP, not aggregated by GRO, the UDP length agreeing with the IP length and the packet:
//     else the packet goes on as if the program were not there (the stack drops what is
//     malformed, as it would without the program).
//  2. Look its (destination, source) address and port pair up in the rules map: no rule, go on.
//     The key holds the source, so a packet from anyone but the latched peer never matches:
//     userspace gets it, and drops and counts it as RTP bleed.
//  3. On a muxed leg (FlagMux), RTCP (second byte 200-207) goes on to userspace.
//  4. Rewrite the addresses and ports, fix the IPv4 header and UDP checksums with the
//     differences the rule carries (the helpers also handle checksum offload), count the packet
//     and its UDP payload bytes in the rule's counter slot, stamp the slot with the time, and
//     redirect the packet to the egress of the rule's interface through the kernel's neighbour
//     table (bpf_redirect_neigh: it resolves the next hop's link address, as a socket's send
//     would, with no forwarding sysctl involved).

// Offsets in struct __sk_buff (include/uapi/linux/bpf.h).
const (
	skbLen         = 0
	skbProtocol    = 16
	skbVlanPresent = 20
	skbData        = 76
	skbDataEnd     = 80
	skbGsoSegs     = 164
)

// Offsets in the packet: Ethernet, then IPv4 (20 bytes) or IPv6 (40 bytes), then UDP.
const (
	ethLen   = 14
	ip4Len   = 20
	ip6Len   = 40
	udpLen   = 8
	l4Off4   = ethLen + ip4Len
	l4Off6   = ethLen + ip6Len
	ip4Csum  = ethLen + 10
	ip4Saddr = ethLen + 12
	ip4Daddr = ethLen + 16
	ip6Saddr = ethLen + 8
	ip6Daddr = ethLen + 24
)

// Offsets on the stack (below R10).
const (
	stKey     = -40 // the Key, 40 bytes
	stL4Off   = -48 // u64: where the UDP header starts
	stPayload = -56 // u64: UDP payload length
	stSlot    = -64 // u32: the rule's counter slot, the counts map's key
	stIfindex = -72 // u64: the rule's interface
	stL3Len   = -80 // u64: what the IP header says follows it
)

// Offsets in Rule and Counts.
const (
	ruleSrc       = 0
	ruleDst       = 16
	ruleSrcPort   = 32
	ruleDstPort   = 34
	ruleFlags     = 36
	ruleIfindex   = 40
	ruleSlot      = 44
	ruleCsumAddrs = 48
	ruleCsumPorts = 52

	countsPackets = 0
	countsBytes   = 8
	countsLast    = 16
)

// Return codes: TCX_NEXT lets the packet continue (to other programs on the hook, then the
// stack) as if this one were not there.
const (
	tcxNext    = -1
	tcActShot  = 2
	ethPIPLE   = 0x0008 // htons(ETH_P_IP) as a little-endian load of skb->protocol reads it
	ethPIPv6LE = 0xdd86 // htons(ETH_P_IPV6) likewise

	fPseudoHdr   = 1 << 4 // BPF_F_PSEUDO_HDR
	fMarkMangled = 1 << 5 // BPF_F_MARK_MANGLED_0
)

// ProgramName is the name the program is loaded under; it is how a left-over attachment is
// recognised (see [Forwarder]).
const ProgramName = "sipcar_media"

// instructions returns the program, bound to the rules and counts maps.
func instructions(rules, counts *ebpf.Map) asm.Instructions {
	const (
		ctx  = asm.R6
		data = asm.R7
		end  = asm.R8
		rule = asm.R9
		fp   = asm.R10
	)
	// copyWords copies n bytes, 4 at a time, from src+srcOff to dst+dstOff.
	copyWords := func(dst asm.Register, dstOff int16, src asm.Register, srcOff int16, n int16) asm.Instructions {
		var out asm.Instructions
		for i := int16(0); i < n; i += 4 {
			out = append(out,
				asm.LoadMem(asm.R2, src, srcOff+i, asm.Word),
				asm.StoreMem(dst, dstOff+i, asm.R2, asm.Word))
		}
		return out
	}
	var p asm.Instructions
	add := func(ins ...asm.Instruction) { p = append(p, ins...) }
	addAll := func(ins asm.Instructions) { p = append(p, ins...) }

	add(
		asm.Mov.Reg(ctx, asm.R1),
		asm.LoadMem(asm.R2, ctx, skbVlanPresent, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "pass"),
		asm.LoadMem(asm.R2, ctx, skbGsoSegs, asm.Word),
		asm.JGT.Imm(asm.R2, 1, "pass"),
		asm.LoadMem(data, ctx, skbData, asm.Word),
		asm.LoadMem(end, ctx, skbDataEnd, asm.Word),
	)
	add(asm.Mov.Imm(asm.R2, 0))
	for off := int16(stKey); off < 0; off += 8 {
		add(asm.StoreMem(fp, off, asm.R2, asm.DWord))
	}
	add(
		asm.LoadMem(asm.R2, ctx, skbProtocol, asm.Word),
		asm.JEq.Imm(asm.R2, ethPIPLE, "v4"),
		asm.JEq.Imm(asm.R2, ethPIPv6LE, "v6"),
		asm.Ja.Label("pass"),
	)

	// IPv4: 0x45 (no options), no fragment, UDP.
	add(
		asm.Mov.Reg(asm.R2, data).WithSymbol("v4"),
		asm.Add.Imm(asm.R2, l4Off4+udpLen),
		asm.JGT.Reg(asm.R2, end, "pass"),
		asm.LoadMem(asm.R2, data, ethLen, asm.Byte),
		asm.JNE.Imm(asm.R2, 0x45, "pass"),
		asm.LoadMem(asm.R2, data, ethLen+6, asm.Half),
		asm.And.Imm(asm.R2, 0xff3f), // MF and the fragment offset, as a little-endian load reads them
		asm.JNE.Imm(asm.R2, 0, "pass"),
		asm.LoadMem(asm.R2, data, ethLen+9, asm.Byte),
		asm.JNE.Imm(asm.R2, 17, "pass"),
	)
	addAll(copyWords(fp, stKey, data, ip4Daddr, 4))
	addAll(copyWords(fp, stKey+16, data, ip4Saddr, 4))
	add(
		asm.LoadMem(asm.R2, data, l4Off4+2, asm.Half),
		asm.StoreMem(fp, stKey+32, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, data, l4Off4, asm.Half),
		asm.StoreMem(fp, stKey+34, asm.R2, asm.Half),
		asm.StoreImm(fp, stKey+36, 4, asm.Byte),
		asm.Mov.Imm(asm.R3, l4Off4),
		asm.StoreMem(fp, stL4Off, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, data, ethLen+2, asm.Half), // total length
		asm.HostTo(asm.BE, asm.R3, asm.Half),
		asm.Sub.Imm(asm.R3, ip4Len),
		asm.StoreMem(fp, stL3Len, asm.R3, asm.DWord),
		asm.LoadMem(asm.R2, data, l4Off4+4, asm.Half),
		asm.Ja.Label("udp"),
	)

	// IPv6: UDP right after the fixed header.
	add(
		asm.Mov.Reg(asm.R2, data).WithSymbol("v6"),
		asm.Add.Imm(asm.R2, l4Off6+udpLen),
		asm.JGT.Reg(asm.R2, end, "pass"),
		asm.LoadMem(asm.R2, data, ethLen+6, asm.Byte),
		asm.JNE.Imm(asm.R2, 17, "pass"),
	)
	addAll(copyWords(fp, stKey, data, ip6Daddr, 16))
	addAll(copyWords(fp, stKey+16, data, ip6Saddr, 16))
	add(
		asm.LoadMem(asm.R2, data, l4Off6+2, asm.Half),
		asm.StoreMem(fp, stKey+32, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, data, l4Off6, asm.Half),
		asm.StoreMem(fp, stKey+34, asm.R2, asm.Half),
		asm.StoreImm(fp, stKey+36, 6, asm.Byte),
		asm.Mov.Imm(asm.R3, l4Off6),
		asm.StoreMem(fp, stL4Off, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, data, ethLen+4, asm.Half), // payload length
		asm.HostTo(asm.BE, asm.R3, asm.Half),
		asm.StoreMem(fp, stL3Len, asm.R3, asm.DWord),
		asm.LoadMem(asm.R2, data, l4Off6+4, asm.Half),
	)

	// R2: the UDP length field. It must be what the IP header leaves for UDP, and the packet
	// must hold it. The payload length is what userspace counts.
	add(
		asm.HostTo(asm.BE, asm.R2, asm.Half).WithSymbol("udp"),
		asm.JLT.Imm(asm.R2, udpLen, "pass"),
		asm.LoadMem(asm.R3, fp, stL3Len, asm.DWord),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
		asm.LoadMem(asm.R3, fp, stL4Off, asm.DWord),
		asm.Add.Reg(asm.R3, asm.R2),
		asm.LoadMem(asm.R4, ctx, skbLen, asm.Word),
		asm.JGT.Reg(asm.R3, asm.R4, "pass"),
		asm.Sub.Imm(asm.R2, udpLen),
		asm.StoreMem(fp, stPayload, asm.R2, asm.DWord),

		asm.LoadMapPtr(asm.R1, rules.FD()),
		asm.Mov.Reg(asm.R2, fp),
		asm.Add.Imm(asm.R2, stKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(rule, asm.R0),

		// A muxed leg's RTCP is userspace's.
		asm.LoadMem(asm.R2, rule, ruleFlags, asm.Word),
		asm.And.Imm(asm.R2, FlagMux),
		asm.JEq.Imm(asm.R2, 0, "rewrite"),
		asm.LoadMem(asm.R3, fp, stL4Off, asm.DWord),
		asm.Mov.Reg(asm.R2, data),
		asm.Add.Reg(asm.R2, asm.R3),
		asm.Add.Imm(asm.R2, udpLen+2),
		asm.JGT.Reg(asm.R2, end, "rewrite"),
		asm.LoadMem(asm.R2, asm.R2, -1, asm.Byte),
		asm.JLT.Imm(asm.R2, 200, "rewrite"),
		asm.JGT.Imm(asm.R2, 207, "rewrite"),
		asm.Ja.Label("pass"),

		// The family, from the UDP offset: the verifier tracks a spilled register's value
		// (which proves the packet long enough on each path), not a byte stored on the stack.
		asm.LoadMem(asm.R3, fp, stL4Off, asm.DWord).WithSymbol("rewrite"),
		asm.JEq.Imm(asm.R3, l4Off6, "rewrite6"),
	)
	// IPv4: addresses, ports, then the header checksum.
	addAll(copyWords(data, ip4Saddr, rule, ruleSrc, 4))
	addAll(copyWords(data, ip4Daddr, rule, ruleDst, 4))
	add(
		asm.LoadMem(asm.R2, rule, ruleSrcPort, asm.Half),
		asm.StoreMem(data, l4Off4, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, rule, ruleDstPort, asm.Half),
		asm.StoreMem(data, l4Off4+2, asm.R2, asm.Half),
		asm.Mov.Reg(asm.R1, ctx),
		asm.Mov.Imm(asm.R2, ip4Csum),
		asm.Mov.Imm(asm.R3, 0),
		asm.LoadMem(asm.R4, rule, ruleCsumAddrs, asm.Word),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnL3CsumReplace.Call(),
		asm.JNE.Imm(asm.R0, 0, "shot"),
		asm.Ja.Label("l4csum"),
	)
	// IPv6: addresses and ports; no header checksum.
	rw6 := copyWords(data, ip6Saddr, rule, ruleSrc, 16)
	rw6[0] = rw6[0].WithSymbol("rewrite6")
	addAll(rw6)
	addAll(copyWords(data, ip6Daddr, rule, ruleDst, 16))
	add(
		asm.LoadMem(asm.R2, rule, ruleSrcPort, asm.Half),
		asm.StoreMem(data, l4Off6, asm.R2, asm.Half),
		asm.LoadMem(asm.R2, rule, ruleDstPort, asm.Half),
		asm.StoreMem(data, l4Off6+2, asm.R2, asm.Half),
	)
	// The UDP checksum: the addresses are in the pseudo-header, the ports in the datagram. A
	// zero checksum (none, over IPv4) stays zero.
	add(
		asm.Mov.Reg(asm.R1, ctx).WithSymbol("l4csum"),
		asm.LoadMem(asm.R2, fp, stL4Off, asm.DWord),
		asm.Add.Imm(asm.R2, 6),
		asm.Mov.Imm(asm.R3, 0),
		asm.LoadMem(asm.R4, rule, ruleCsumAddrs, asm.Word),
		asm.Mov.Imm(asm.R5, fPseudoHdr|fMarkMangled),
		asm.FnL4CsumReplace.Call(),
		asm.JNE.Imm(asm.R0, 0, "shot"),
		asm.Mov.Reg(asm.R1, ctx),
		asm.LoadMem(asm.R2, fp, stL4Off, asm.DWord),
		asm.Add.Imm(asm.R2, 6),
		asm.Mov.Imm(asm.R3, 0),
		asm.LoadMem(asm.R4, rule, ruleCsumPorts, asm.Word),
		asm.Mov.Imm(asm.R5, fMarkMangled),
		asm.FnL4CsumReplace.Call(),
		asm.JNE.Imm(asm.R0, 0, "shot"),

		// Count it.
		asm.LoadMem(asm.R2, rule, ruleIfindex, asm.Word),
		asm.StoreMem(fp, stIfindex, asm.R2, asm.DWord),
		asm.LoadMem(asm.R2, rule, ruleSlot, asm.Word),
		asm.StoreMem(fp, stSlot, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, counts.FD()),
		asm.Mov.Reg(asm.R2, fp),
		asm.Add.Imm(asm.R2, stSlot),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "redirect"),
		asm.Mov.Reg(rule, asm.R0), // the counts from here on
		asm.Mov.Imm(asm.R2, 1),
		asm.AddAtomic.Mem(rule, asm.R2, asm.DWord, countsPackets),
		asm.LoadMem(asm.R2, fp, stPayload, asm.DWord),
		asm.AddAtomic.Mem(rule, asm.R2, asm.DWord, countsBytes),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(rule, countsLast, asm.R0, asm.DWord),

		asm.LoadMem(asm.R1, fp, stIfindex, asm.DWord).WithSymbol("redirect"),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRedirectNeigh.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("pass"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcActShot).WithSymbol("shot"),
		asm.Return(),
	)
	return p
}

// programSpec is the program, ready to load.
func programSpec(rules, counts *ebpf.Map) *ebpf.ProgramSpec {
	return &ebpf.ProgramSpec{
		Name:         ProgramName,
		Type:         ebpf.SchedCLS,
		AttachType:   ebpf.AttachTCXIngress,
		Instructions: instructions(rules, counts),
		// No GPL-only helper is used; the string is one the kernel reads as GPL-compatible.
		License: "Dual MIT/GPL",
	}
}
