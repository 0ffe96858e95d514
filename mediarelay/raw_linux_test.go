package mediarelay

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// A raw UDP socket gets a copy of every UDP datagram for its address: the send socket of the
// raw scheme must not, or every media packet would be cloned into a queue nobody reads. The
// plain raw socket beside it shows that the datagram did reach the raw sockets' layer.
func TestRawSendSocketReceivesNothing(t *testing.T) {
	requirePrivilege(t)
	l := newLab(t)
	for _, v4 := range []bool{true, false} {
		loopback := netip.MustParseAddrPort("[::1]:9")
		if v4 {
			loopback = netip.MustParseAddrPort("127.0.0.1:9")
		}
		var queued, control int
		var err error
		in(t, l.sipcar, func() {
			queued, control, err = rawCopies(v4, loopback)
		})
		if err != nil {
			t.Fatalf("%v: %v", loopback, err)
		}
		if control == 0 {
			t.Fatalf("%v: a plain raw UDP socket got no copy of the datagram: the test shows nothing", loopback)
		}
		if queued != 0 {
			t.Errorf("%v: the raw send socket queued %d bytes of a datagram sent to it", loopback, queued)
		}
	}
}

// rawCopies opens the raw scheme's socket and a plain raw UDP socket, sends one datagram to
// to, and returns what each has queued.
func rawCopies(v4 bool, to netip.AddrPort) (queued, control int, err error) {
	fd, err := sock.OpenRaw(v4, true)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(fd)
	fam, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()})
	if v4 {
		fam, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	}
	plain, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(plain)
	udp, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(udp)
	if err := unix.Sendto(udp, []byte("not for the relay"), 0, sa); err != nil {
		return 0, 0, fmt.Errorf("send: %w", err)
	}
	for deadline := time.Now().Add(2 * time.Second); control == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		if control, err = unix.IoctlGetInt(plain, unix.SIOCINQ); err != nil {
			return 0, 0, fmt.Errorf("SIOCINQ: %w", err)
		}
	}
	queued, err = unix.IoctlGetInt(fd, unix.SIOCINQ)
	return queued, control, err
}

// The relay address of a leg need not be the address the kernel would pick as source for the
// peer (a second address on the interface, a public address on a loopback or dummy device):
// packets must still leave from it, which the raw scheme's IP_PKTINFO decides.
func TestSendsFromTheLegsAddress(t *testing.T) {
	second := map[string]string{"ipv4": "198.51.100.11", "ipv6": "2001:db8:b::11"}
	forEachMode(t, func(t *testing.T, m relayMode, f ipFamily) {
		l := newLab(t)
		prefix := "/24"
		if f.name == "ipv6" {
			prefix = "/64"
		}
		run(t, "ip", "-n", l.sipcar, "addr", "add", second[f.name]+prefix, "dev", "out0", "nodad")
		r := l.startRelay(t, m, Config{})
		phone := l.listen(t, l.phone, f.at(f.phone, 30000).String())
		remote := l.listen(t, l.remote, f.at(f.remote, 40000).String())
		spec := StreamSpec{
			CallID: "second-address",
			A:      LegSpec{RTP: f.at(f.sipcarIn, 20000), RTCP: f.at(f.sipcarIn, 20001), Peer: phone.addr},
			B:      LegSpec{RTP: f.at(second[f.name], 20002), RTCP: f.at(second[f.name], 20003), Peer: remote.addr},
		}
		addStream(t, r, spec)
		p := rtpPacket(1, 0, 0xa, 1)
		phone.send(spec.A.RTP, p)
		remote.expect(p, spec.B.RTP)
		back := rtpPacket(1, 0, 0xb, 2)
		remote.send(spec.B.RTP, back)
		phone.expect(back, spec.A.RTP)
	})
}
