//go:build unix

package relay

import "syscall"

// descriptorLimit returns the process's limit on open files (the soft limit, which the Go runtime
// raises to the hard one at start), or 0 when it cannot tell.
func descriptorLimit() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<30 {
		return 0
	}
	return int(l.Cur)
}
