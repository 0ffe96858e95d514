package sock

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// loopbacks runs f over IPv4 and IPv6 loopback.
func loopbacks(t *testing.T, f func(t *testing.T, lo netip.Addr)) {
	for _, a := range []string{"127.0.0.1", "::1"} {
		lo := netip.MustParseAddr(a)
		t.Run(a, func(t *testing.T) {
			if lo.Is6() {
				c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
				if err != nil {
					if os.Getenv("CI") == "true" {
						t.Fatalf("no IPv6 loopback: %v", err)
					}
					t.Skipf("no IPv6 loopback: %v", err)
				}
				c.Close()
			}
			f(t, lo)
		})
	}
}

// recvSocket opens a UDP socket on lo (any port) that reports each datagram's destination
// (IP_RECVORIGDSTADDR needs no privilege: for a datagram nothing intercepted, it is the
// socket's own address), with a receive timeout so that a failing test does not hang.
func recvSocket(t *testing.T, lo netip.Addr) (int, netip.AddrPort) {
	t.Helper()
	fd, err := OpenPort(netip.AddrPortFrom(lo, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetNonblock(fd, false); err != nil {
		t.Fatal(err)
	}
	level, opt := unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR
	if lo.Is4() {
		level, opt = unix.SOL_IP, unix.IP_RECVORIGDSTADDR
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return fd, netip.AddrPortFrom(lo, uint16(sa.Port))
	case *unix.SockaddrInet6:
		return fd, netip.AddrPortFrom(lo, uint16(sa.Port))
	}
	t.Fatalf("getsockname: %T", sa)
	return -1, netip.AddrPort{}
}

// Datagrams sent with Sendmmsg to Addr.Name arrive whole, and Recvmmsg, AddrPortOf and OrigDst
// read their sources and destinations from what the kernel wrote.
func TestBatchRoundTrip(t *testing.T) {
	loopbacks(t, func(t *testing.T, lo netip.Addr) {
		rx, to := recvSocket(t, lo)
		tx, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)))
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Close()
		from := tx.LocalAddr().(*net.UDPAddr).AddrPort()
		raw, err := tx.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}

		payloads := [][]byte{[]byte("first"), []byte("the second one")}
		var dst Addr
		dst.Set(to)
		var iov [2]unix.Iovec
		var names [2]unix.RawSockaddrInet6
		var msgs [2]unix.Mmsghdr
		for i, p := range payloads {
			iov[i].Base = &p[0]
			iov[i].SetLen(len(p))
			var n uint32
			names[i], n = dst.Name()
			msgs[i].Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&names[i])), Namelen: n, Iov: &iov[i], Iovlen: 1}
		}
		var sent, failed int
		if err := raw.Control(func(fd uintptr) { sent, failed = Sendmmsg(int(fd), msgs[:], false) }); err != nil {
			t.Fatal(err)
		}
		if sent != 2 || failed != 0 {
			t.Fatalf("Sendmmsg: %d sent, %d failed; want 2, 0", sent, failed)
		}

		var bufs [4][64]byte
		var ctrl [4][64]byte
		var riov [4]unix.Iovec
		var rnames [4]unix.RawSockaddrInet6
		var rmsgs [4]unix.Mmsghdr
		var got [][]byte
		for deadline := time.Now().Add(5 * time.Second); len(got) < 2 && time.Now().Before(deadline); {
			for i := range rmsgs {
				riov[i].Base = &bufs[i][0]
				riov[i].SetLen(len(bufs[i]))
				rmsgs[i].Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&rnames[i])), Namelen: unix.SizeofSockaddrInet6,
					Iov: &riov[i], Iovlen: 1, Control: &ctrl[i][0]}
				rmsgs[i].Hdr.SetControllen(len(ctrl[i]))
			}
			n, e := Recvmmsg(rx, rmsgs[:], true)
			if e != 0 {
				t.Fatalf("Recvmmsg: %v", e)
			}
			for i := range n {
				if src := AddrPortOf(&rnames[i]); src != from {
					t.Errorf("datagram %d from %v, want %v", len(got), src, from)
				}
				if d := OrigDst(ctrl[i][:rmsgs[i].Hdr.Controllen]); d != to {
					t.Errorf("datagram %d: OrigDst %v, want %v", len(got), d, to)
				}
				got = append(got, append([]byte(nil), bufs[i][:rmsgs[i].Len]...))
			}
		}
		if len(got) != 2 || string(got[0]) != "first" || string(got[1]) != "the second one" {
			t.Errorf("received %q, want %q", got, payloads)
		}
		// Nothing waits now: without block, Recvmmsg returns at once.
		if n, e := Recvmmsg(rx, rmsgs[:], false); n != 0 || e != unix.EAGAIN {
			t.Errorf("Recvmmsg on an empty socket = %d, %v; want 0, EAGAIN", n, e)
		}
	})
}

// cmsg builds one control message of level and type with data, aligned as the kernel does.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func TestOrigDstControlMessages(t *testing.T) {
	sin := func(ap netip.AddrPort) []byte {
		var a Addr
		a.Set(ap)
		name, n := a.Name()
		return unsafe.Slice((*byte)(unsafe.Pointer(&name)), unix.SizeofSockaddrInet6)[:n]
	}
	v4 := netip.MustParseAddrPort("198.51.100.1:20002")
	v6 := netip.MustParseAddrPort("[2001:db8:b::1]:20002")
	timestamp := cmsg(unix.SOL_SOCKET, unix.SO_TIMESTAMP, make([]byte, 16))
	orig4 := cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sin(v4))
	orig6 := cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sin(v6))
	for _, tt := range []struct {
		name string
		ctrl []byte
		want netip.AddrPort
	}{
		{"ipv4", orig4, v4},
		{"ipv6", orig6, v6},
		{"after another message", append(append([]byte(nil), timestamp...), orig6...), v6},
		{"none", timestamp, netip.AddrPort{}},
		{"empty", nil, netip.AddrPort{}},
		{"cut short", orig4[:unix.CmsgLen(0)+4], netip.AddrPort{}},
		{"too short for its address", cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sin(v4)), netip.AddrPort{}},
	} {
		if got := OrigDst(tt.ctrl); got != tt.want {
			t.Errorf("%s: OrigDst = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A TCP connection nothing redirected has no SO_ORIGINAL_DST, nor has a connection that is no
// TCP socket.
func TestOriginalDstNotRedirected(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if dst, ok := OriginalDst(c); ok {
		t.Errorf("OriginalDst of a plain connection = %v, true", dst)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if dst, ok := OriginalDst(a); ok {
		t.Errorf("OriginalDst of a pipe = %v, true", dst)
	}
}

// The kernel doubles what SO_RCVBUF and SO_SNDBUF ask for (room for its bookkeeping): sizes
// below net.core.rmem_max and wmem_max come back doubled, privileged or not.
func TestBuffers(t *testing.T) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	get := func(opt int) int {
		raw, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		if err := raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, opt) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		return v
	}
	snd := get(unix.SO_SNDBUF)
	RaiseBuffers(c, 12<<10, 0)
	if got := get(unix.SO_RCVBUF); got != 24<<10 {
		t.Errorf("SO_RCVBUF = %d, want %d", got, 24<<10)
	}
	if got := get(unix.SO_SNDBUF); got != snd {
		t.Errorf("SO_SNDBUF = %d, want it left at %d", got, snd)
	}
	RaiseBuffers(c, 0, 20<<10)
	if got := get(unix.SO_SNDBUF); got != 40<<10 {
		t.Errorf("SO_SNDBUF = %d, want %d", got, 40<<10)
	}
}
