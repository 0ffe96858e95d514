package pinhole

import (
	"io"
	"net/netip"
	"os"
	"syscall"
)

// bindTCP binds a TCP socket to ap without listening: the port is held, and a connection
// attempt to it is refused rather than left waiting in a backlog nobody accepts from.
func bindTCP(ap netip.AddrPort) (io.Closer, error) {
	var sa syscall.Sockaddr
	family := syscall.AF_INET
	if ap.Addr().Is4() {
		sa = &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = syscall.AF_INET6
		sa = &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if family == syscall.AF_INET6 {
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 1); err != nil {
			syscall.Close(fd)
			return nil, os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
		}
	}
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	// An *os.File closes the descriptor once, and its finalizer would close a leaked one.
	return os.NewFile(uintptr(fd), "tcp reservation "+ap.String()), nil
}
