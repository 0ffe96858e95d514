package mediarelay

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// netns pins the network namespace a [Relay] was created in, so that what it does later from
// any goroutine (open a port socket, remove its nftables table) happens there too: sockets
// keep the namespace they were created in, but a new socket or a child process gets the one
// of the calling thread.
type netns struct {
	f        *os.File
	dev, ino uint64
}

const threadNetns = "/proc/thread-self/ns/net"

func currentNetns() (*netns, error) {
	f, err := os.Open(threadNetns)
	if err != nil {
		return nil, fmt.Errorf("open network namespace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat network namespace: %w", err)
	}
	return &netns{f: f, dev: st.Dev, ino: st.Ino}, nil
}

// do runs fn on a thread in the namespace. Where the calling thread already is in it (the
// usual case), fn just runs; switching needs CAP_SYS_ADMIN.
func (n *netns) do(fn func() error) error {
	runtime.LockOSThread()
	var st unix.Stat_t
	if err := unix.Stat(threadNetns, &st); err == nil && st.Dev == n.dev && st.Ino == n.ino {
		defer runtime.UnlockOSThread()
		return fn()
	}
	orig, err := os.Open(threadNetns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is in the wrong namespace: leave it locked so that it exits with the
		// goroutine instead of serving others.
		return fmt.Errorf("leave network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

func (n *netns) close() error { return n.f.Close() }
