//go:build !linux

package mediarelay

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The kernel fast path is an eBPF program on tc ingress: Linux only. Elsewhere KernelAuto
// relays everything in userspace and KernelOn fails in New.

// kernelLeg is empty: no leg is ever in the kernel.
type kernelLeg struct{}

// openKernel refuses KernelOn; the others relay everything in userspace.
func (r *Relay) openKernel() error {
	if r.cfg.Kernel == KernelOn {
		return fmt.Errorf("mediarelay kernel path: it needs Linux (eBPF on tc ingress): %w", errors.ErrUnsupported)
	}
	return nil
}

// KernelPath reports whether latched legs are handed to the kernel, and why (not).
func (r *Relay) KernelPath() (bool, string) { return false, "the kernel fast path needs Linux" }

func (r *Relay) kernelSync(*Stream, time.Time) {}
func (r *Relay) latchedFinal(*endpoint)        {}
func (r *Relay) kernelWake() <-chan struct{}   { return nil }
func (r *Relay) kernelSweep(time.Time)         {}
func (r *Relay) kernelForwarded() uint64       { return 0 }
func (e *endpoint) kernelActivity() uint64     { return 0 }
func (s *Stream) addKernelStats(*StreamStats)  {}
func newKernelDescs(func(string, string, ...string) *prometheus.Desc) kernelDescs {
	return kernelDescs{}
}

// kernelDescs has no metrics outside Linux.
type kernelDescs struct{}

func (kernelDescs) describe(chan<- *prometheus.Desc)                              {}
func (kernelDescs) collect(chan<- prometheus.Metric, *Relay, []*Stream, Counters) {}
