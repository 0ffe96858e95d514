//go:build linux

// Command flood floods a relay with the RTP of the calls of an rtpload pairs file, as fast as
// one core can send, for the benchmark's flood test: rtpload sends from userspace and times
// what comes back, which costs its core more than a kernel relay costs the relay's, so it
// cannot find a kernel relay's limit.
//
// It builds each call's two frames once (A to relay-A, B to relay-B: a 172-byte RTP packet in
// UDP over IPv4 without a UDP checksum, Ethernet addressed to the relay's side of the link)
// and sends them round robin with sendmmsg on a packet socket per interface that bypasses the
// queueing discipline. Nothing is kept of what comes back: a program on the tc ingress of both
// interfaces counts it and drops it. After a warm-up (latching, a kernel relay's hand-over), it
// measures for the duration: frames sent and received per second.
//
// Run it (root) in the generator's namespace: flood -pairs FILE -calls N -a ga0 -b gb0
// -a-mac MAC -b-mac MAC -warmup 1s -duration 3s. It prints the rates as JSON.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	ebpflink "github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func main() {
	pairs := flag.String("pairs", "", "rtpload pairs file: A-endpoint relay-A B-endpoint relay-B per line (required)")
	calls := flag.Int("calls", 0, "calls to send, from the top of the file (default all)")
	ifA := flag.String("a", "", "interface facing relay-A (required)")
	ifB := flag.String("b", "", "interface facing relay-B (required)")
	macA := flag.String("a-mac", "", "link address of relay-A's side of the link (required)")
	macB := flag.String("b-mac", "", "link address of relay-B's side of the link (required)")
	warmup := flag.Duration("warmup", time.Second, "how long to send before measuring")
	duration := flag.Duration("duration", 3*time.Second, "how long to measure")
	flag.Parse()
	if err := run(*pairs, *calls, *ifA, *ifB, *macA, *macB, *warmup, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
}

// direction is one way of a call: addresses and ports, as they go into its frame.
type direction struct {
	Src, Dst         [4]byte
	SrcPort, DstPort [2]byte
}

const (
	rtpSize   = 172
	udpSize   = 8 + rtpSize
	ipSize    = 20 + udpSize
	frameSize = 14 + ipSize
	batch     = 256
)

func run(pairsFile string, calls int, ifA, ifB, macA, macB string, warmup, duration time.Duration) error {
	if pairsFile == "" || ifA == "" || ifB == "" || macA == "" || macB == "" {
		return errors.New("-pairs, -a, -b, -a-mac and -b-mac are required")
	}
	entries, err := readPairs(pairsFile, calls)
	if err != nil {
		return err
	}
	var socks [2]int
	var ifindex [2]int
	var frames [2][]byte // per interface, the frames of every call one after the other
	for i, l := range []struct{ dev, mac string }{{ifA, macA}, {ifB, macB}} {
		ifi, err := net.InterfaceByName(l.dev)
		if err != nil {
			return err
		}
		dst, err := net.ParseMAC(l.mac)
		if err != nil {
			return err
		}
		ifindex[i] = ifi.Index
		for _, e := range entries {
			frames[i] = append(frames[i], frame(dst, ifi.HardwareAddr, e[i])...)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0) // protocol 0: sends only
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind %s: %w", l.dev, err)
		}
		socks[i] = fd
	}

	received, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("received map: %w", err)
	}
	defer received.Close()
	sink, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual MIT/GPL", Instructions: sinkProgram(received)})
	if err != nil {
		return fmt.Errorf("load the sink: %w", err)
	}
	defer sink.Close()
	for _, i := range ifindex {
		tcx, err := ebpflink.AttachTCX(ebpflink.TCXOptions{Interface: i, Program: sink, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach the sink: %w", err)
		}
		defer tcx.Close()
	}
	count := func() uint64 {
		var n uint64
		_ = received.Lookup(uint32(0), &n)
		return n
	}

	// Batches of frames, alternating the interfaces, each batch the next calls' frames.
	var iov [2][batch]unix.Iovec
	var msgs [2][batch]unix.Mmsghdr
	for i := range 2 {
		for j := range batch {
			iov[i][j].SetLen(frameSize)
			msgs[i][j].Hdr.Iov = &iov[i][j]
			msgs[i][j].Hdr.Iovlen = 1
		}
	}
	n := len(entries)
	next := 0
	var sent, failed uint64
	send := func(until time.Time) {
		for time.Now().Before(until) {
			for k := 0; k < 64; k++ {
				for i := range 2 {
					for j := range batch {
						c := (next + j) % n
						iov[i][j].Base = &frames[i][c*frameSize]
					}
					done, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(socks[i]), uintptr(unsafe.Pointer(&msgs[i][0])), batch, 0, 0, 0)
					if errno != 0 {
						failed += batch
						continue
					}
					sent += uint64(done)
					failed += uint64(batch - int(done))
				}
				next = (next + batch) % n
			}
		}
	}
	send(time.Now().Add(warmup))
	start, sent0, recv0 := time.Now(), sent, count()
	send(start.Add(duration))
	secs := time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"calls": n, "seconds": secs,
		"sent_pps": float64(sent-sent0) / secs, "received_pps": float64(count()-recv0) / secs, "send_failures": failed})
}

// frame builds the Ethernet frame of one direction of a call.
func frame(dst, src net.HardwareAddr, d direction) []byte {
	f := make([]byte, frameSize)
	copy(f[0:], dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], ipSize)
	copy(ip[12:], d.Src[:])
	copy(ip[16:], d.Dst[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := ip[20:]
	copy(udp[0:], d.SrcPort[:])
	copy(udp[2:], d.DstPort[:])
	binary.BigEndian.PutUint16(udp[4:], udpSize)
	udp[8] = 0x80 // RTP version 2, payload type 0
	return f
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// sinkProgram counts and drops what arrives.
func sinkProgram(received *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Imm(asm.R2, 0),
		asm.StoreMem(asm.R10, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, received.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Imm(asm.R2, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R2, asm.DWord, 0),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("drop"), // TC_ACT_SHOT
		asm.Return(),
	}
}

// readPairs reads the calls of a pairs file: per call, its two directions.
func readPairs(file string, calls int) ([][2]direction, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][2]direction
	sc := bufio.NewScanner(f)
	for sc.Scan() && (calls == 0 || len(out) < calls) {
		fields := strings.Fields(sc.Text())
		if len(fields) != 4 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		var a [4]netip.AddrPort
		for i, s := range fields {
			if a[i], err = netip.ParseAddrPort(s); err != nil {
				return nil, err
			}
			if !a[i].Addr().Is4() {
				return nil, fmt.Errorf("%v: IPv4 only", a[i])
			}
		}
		out = append(out, [2]direction{newDirection(a[0], a[1]), newDirection(a[2], a[3])})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no calls")
	}
	return out, nil
}

func newDirection(src, dst netip.AddrPort) direction {
	d := direction{Src: src.Addr().As4(), Dst: dst.Addr().As4()}
	binary.BigEndian.PutUint16(d.SrcPort[:], src.Port())
	binary.BigEndian.PutUint16(d.DstPort[:], dst.Port())
	return d
}
