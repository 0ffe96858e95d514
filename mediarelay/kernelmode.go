package mediarelay

import (
	"fmt"
	"strings"
)

// KernelMode chooses whether latched legs are handed to the kernel (package
// mediarelay/kernel): an eBPF program on tc ingress forwards and address-translates their RTP
// without the packets reaching userspace.
type KernelMode uint8

const (
	// KernelOff keeps every packet in userspace.
	KernelOff KernelMode = iota
	// KernelAuto uses the kernel path where the kernel and the process's capabilities allow
	// it, and says once in the log why not otherwise.
	KernelAuto
	// KernelOn requires it: New fails when it cannot be set up.
	KernelOn
)

func (m KernelMode) String() string {
	switch m {
	case KernelOff:
		return "off"
	case KernelAuto:
		return "auto"
	case KernelOn:
		return "on"
	}
	return fmt.Sprintf("KernelMode(%d)", uint8(m))
}

// UnmarshalText parses "auto", "on" or "off" (SIPCAR_MEDIA_KERNEL).
func (m *KernelMode) UnmarshalText(text []byte) error {
	switch strings.ToLower(strings.TrimSpace(string(text))) {
	case "auto":
		*m = KernelAuto
	case "on":
		*m = KernelOn
	case "off":
		*m = KernelOff
	default:
		return fmt.Errorf("%q: want auto, on or off", text)
	}
	return nil
}
