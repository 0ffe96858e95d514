package mediarelay

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// isolate moves the calling test goroutine into a network namespace of its own, with only a
// loopback interface, when the process may make one: a relay it opens there (New runs nft)
// and the sockets it opens touch nothing of the host's. The goroutine's thread stays locked
// and ends with it, and the namespace with the last socket in it. Without the privilege the
// test runs where it is, where nft could change nothing either.
func isolate(t *testing.T) {
	t.Helper()
	runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Logf("no namespace of its own (%v): the test runs in the process's", err)
		return
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		t.Fatalf("loopback up: %v", err)
	}
}
