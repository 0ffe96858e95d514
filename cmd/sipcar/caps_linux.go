package main

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// raiseCapabilities makes every permitted capability effective, in every thread of the
// process. The image sets sipcar's file capabilities as permitted only, not effective: a
// binary whose file capabilities are effective is refused by execve when the container lacks
// one of them, while this way a container without CAP_NET_ADMIN still starts and falls back
// to a socket per relay port. Capabilities are per thread and the Go runtime has several by
// now, hence AllThreadsSyscall (which needs a binary built without cgo, as the image's is).
func raiseCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	if data[0].Effective == data[0].Permitted && data[1].Effective == data[1].Permitted {
		return nil // root, or nothing to raise
	}
	data[0].Effective, data[1].Effective = data[0].Permitted, data[1].Permitted
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	if errno != 0 {
		if errors.Is(errno, syscall.ENOTSUP) {
			return errors.New("capset on every thread needs a binary built with CGO_ENABLED=0")
		}
		return fmt.Errorf("capset: %w", errno)
	}
	return nil
}

// capabilityAttrs lists, for the start-up log, which of the capabilities sipcar's features
// need are effective.
func capabilityAttrs() []any {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return []any{"err", err}
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	return []any{
		"net_admin", has(unix.CAP_NET_ADMIN), // nftables fan-in table, TPROXY, the bridge probe's veth
		"net_raw", has(unix.CAP_NET_RAW), // raw sends, the bridge probe's packet socket
		"net_bind_service", has(unix.CAP_NET_BIND_SERVICE), // listeners below port 1024
		"bpf", has(unix.CAP_BPF), // the kernel fast path's program and maps (SIPCAR_MEDIA_KERNEL)
	}
}
