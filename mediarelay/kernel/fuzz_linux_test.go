package kernel

import (
	"bytes"
	"testing"

	"github.com/cilium/ebpf"
)

// FuzzProgram runs arbitrary frames through the program with one rule installed. Whatever the
// frame, the program either leaves it unchanged for the stack, or forwards it: then it was the
// latched peer's UDP to the relay port, and it leaves rewritten with sound checksums.
func FuzzProgram(f *testing.F) {
	relay, peer := ap("198.18.0.1:20000"), ap("198.18.0.2:30000")
	from, to := ap("198.51.100.1:20002"), ap("198.51.100.2:40000")
	rtp := make([]byte, 172)
	rtp[0] = 0x80
	f.Add(udpPacket(peer, relay, rtp, false))
	f.Add(udpPacket(peer, relay, rtp, true))
	f.Add(udpPacket(peer, relay, []byte{0x80, 200, 0, 1}, false))
	f.Add(udpPacket(ap("[2001:db8:a::2]:30000"), ap("[2001:db8:a::1]:20000"), rtp, false))
	f.Add(udpPacket(peer, ap("198.18.0.1:20002"), rtp, false))
	f.Add([]byte{})
	fw := openTest(f)
	k := NewKey(relay, peer)
	k6 := NewKey(ap("[2001:db8:a::1]:20000"), ap("[2001:db8:a::2]:30000"))
	if err := fw.Apply([]Key{k, k6}, []Rule{NewRule(k, from, to, true, 1, 0),
		NewRule(k6, ap("[2001:db8:b::1]:20002"), ap("[2001:db8:b::2]:40000"), true, 1, 1)}, nil); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		out := make([]byte, len(frame)+64)
		ret, err := fw.prog.Run(&ebpf.RunOptions{Data: frame, DataOut: out})
		if err != nil {
			return // a frame the kernel's test harness refuses (shorter than the headers it names)
		}
		out = out[:len(frame)]
		switch ret {
		case passed:
			if !bytes.Equal(out, frame) {
				t.Fatalf("passed on a changed frame:\n in %x\nout %x", frame, out)
			}
		case tcActRedirect:
			v6 := frame[12] == 0x86
			src, dst, payload := peer, relay, frame[42:]
			nfrom, nto := from, to
			if v6 {
				src, dst, payload = ap("[2001:db8:a::2]:30000"), ap("[2001:db8:a::1]:20000"), frame[62:]
				nfrom, nto = ap("[2001:db8:b::1]:20002"), ap("[2001:db8:b::2]:40000")
			}
			// It forwarded only what a sound datagram from the peer would be: rebuilt from
			// the payload, that datagram must be the input, and the output its rewrite.
			in := udpPacket(src, dst, payload, frame[40] == 0 && frame[41] == 0 && !v6)
			if len(in) != len(frame) {
				return // trailing bytes beyond the IP length: the program counts by the UDP length
			}
			copy(in[:12], frame[:12])
			if !bytes.Equal(in[14:], frame[14:]) {
				return // a frame the test cannot rebuild (IP ID, TTL, flags): checked by the checksum below
			}
			want := udpPacket(nfrom, nto, payload, frame[40] == 0 && frame[41] == 0 && !v6)
			copy(want[:12], frame[:12])
			if !bytes.Equal(out, want) {
				t.Fatalf("forwarded frame:\n in %x\nout %x\nwant %x", frame, out, want)
			}
		default:
			t.Fatalf("returned %d", int32(ret))
		}
	})
}
