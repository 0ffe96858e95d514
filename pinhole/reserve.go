package pinhole

import (
	"io"
	"net/netip"
)

// ReserveFunc holds port addr for network ("udp" or "tcp") until the returned Closer is closed,
// so that nothing else on the host can take it meanwhile. An error means the port cannot be had
// (it is in use); the Map then tries another. The Map closes the Closer exactly once, when the
// binding is released or when an allocation it was part of is rolled back. A ReserveFunc is
// called concurrently, never with the Map's lock held.
//
// The Map knows no sockets: its user passes the functions that hold ports (package relay
// passes the media relay's port sockets and the SIP transport's bindings).
type ReserveFunc func(network string, addr netip.AddrPort) (io.Closer, error)
