package relay

import (
	"net/netip"
	"slices"
	"sync"

	"github.com/sipcar/sipcar/pinhole"
)

// natState is what the relay learns of its peers' NATs and transports as messages pass: the
// addresses senders wrote in their Vias where their packets came from elsewhere (a phone behind
// its own NAT), and, per sip binding, the transport its original address is reached over (the
// binding's own transport is the far side's: a phone on UDP behind a binding that a PBX reaches
// over TLS).
type natState struct {
	mu      sync.Mutex // guards the following
	aliases map[aliasKey]netip.AddrPort
	// vias is aliases the other way round: by side and source, the Vias written for it (a
	// replica keeps them with the sip binding of that source).
	vias          map[aliasKey][]netip.AddrPort
	origTransport map[netip.AddrPort]string
	// contacts is, per sip binding, the host and port a phone wrote in the Contact of its
	// REGISTER, which the registrar's answer gives back as it was written.
	contacts map[netip.AddrPort]string
}

// aliasKey names an address a sender behind a NAT wrote in its Via, on one side.
type aliasKey struct {
	side pinhole.Side
	addr netip.AddrPort
}

// maxAliases bounds the aliases remembered: a flood of distinct Vias must not grow memory.
const maxAliases = 100000

func newNATState() *natState {
	return &natState{aliases: make(map[aliasKey]netip.AddrPort), vias: make(map[aliasKey][]netip.AddrPort),
		origTransport: make(map[netip.AddrPort]string), contacts: make(map[netip.AddrPort]string)}
}

// setAlias records that what a sender on side wrote as via came from src, and reports whether
// that is news.
func (n *natState) setAlias(side pinhole.Side, via, src netip.AddrPort) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := aliasKey{side, via}
	old, ok := n.aliases[k]
	if ok && old == src {
		return false
	}
	if len(n.aliases) > maxAliases {
		clear(n.aliases)
		clear(n.vias)
		ok = false
	}
	if ok {
		was := aliasKey{side, old}
		n.vias[was] = slices.DeleteFunc(n.vias[was], func(a netip.AddrPort) bool { return a == via })
		if len(n.vias[was]) == 0 {
			delete(n.vias, was)
		}
	}
	n.aliases[k] = src
	n.vias[aliasKey{side, src}] = append(n.vias[aliasKey{side, src}], via)
	return true
}

// viasOf returns the Vias senders on side wrote that stand for src.
func (n *natState) viasOf(side pinhole.Side, src netip.AddrPort) []netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.vias[aliasKey{side, src}])
}

// alias returns where packets from the sender that wrote a on side come from.
func (n *natState) alias(side pinhole.Side, a netip.AddrPort) (netip.AddrPort, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	src, ok := n.aliases[aliasKey{side, a}]
	return src, ok
}

// noteTransport records the transport a sip binding's original address is reached over, and
// reports whether that is news.
func (n *natState) noteTransport(b *pinhole.Binding, transport string) bool {
	if transport == "" || transport == b.Transport() {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.origTransport[b.Address()] == transport {
		return false
	}
	n.origTransport[b.Address()] = transport
	return true
}

// recordedTransport returns what noteTransport recorded for b, "" when nothing.
func (n *natState) recordedTransport(b netip.AddrPort) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.origTransport[b]
}

// originalTransport returns the transport that reaches what b stands for.
func (n *natState) originalTransport(b *pinhole.Binding) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t, ok := n.origTransport[b.Address()]; ok {
		return t
	}
	return b.Transport()
}

// noteContact records the host and port a REGISTER's Contact named, as written, for the binding
// that stands for it, and reports whether that is news.
func (n *natState) noteContact(b *pinhole.Binding, written []byte) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if cur, ok := n.contacts[b.Address()]; ok && cur == string(written) {
		return false
	}
	n.contacts[b.Address()] = string(written)
	return true
}

// contact returns what noteContact recorded for the binding at a.
func (n *natState) contact(a netip.AddrPort) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	w, ok := n.contacts[a]
	return w, ok
}

// forget drops what was recorded of a released sip binding.
func (n *natState) forget(b *pinhole.Binding) {
	n.mu.Lock()
	delete(n.origTransport, b.Address())
	delete(n.contacts, b.Address())
	n.mu.Unlock()
}
