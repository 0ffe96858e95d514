package mediarelay

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
	fd, err := openRaw(v4)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(fd)
	plain, err := unix.Socket(family(v4), unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(plain)
	udp, err := unix.Socket(family(v4), unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(udp)
	if err := unix.Sendto(udp, []byte("not for the relay"), 0, sockaddrOf(to)); err != nil {
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
