package pinhole

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"
)

// Snapshot is the server map at one instant, for the admin endpoint (as JSON) and for the
// vendors' text displays ([Snapshot.WriteServerMap], [Snapshot.WriteSessionTable]).
type Snapshot struct {
	Time           time.Time `json:"time"`
	Calls          int       `json:"calls"`
	MediaPorts     PortUsage `json:"media_ports"`
	SignalingPorts PortUsage `json:"signaling_ports"`
	// Bindings in the order they were made.
	Bindings []Entry `json:"bindings"`
}

// PortUsage is the state of a port range.
type PortUsage struct {
	First uint16 `json:"first"`
	Last  uint16 `json:"last"`
	InUse int    `json:"in_use"`
	Free  int    `json:"free"`
}

// Entry is one binding of a [Snapshot]. Times are UTC (RFC 3339 in JSON).
type Entry struct {
	Type      Type           `json:"type"`
	Protocol  string         `json:"protocol"`  // "udp" or "tcp"
	Transport string         `json:"transport"` // SIP transport; "udp" for media
	Faces     Side           `json:"faces"`
	Address   netip.AddrPort `json:"address"`    // sipcar's
	ForwardTo netip.AddrPort `json:"forward_to"` // what it stands for
	// Peer is the far end of its traffic (see [Binding.Peer]); null means ANY.
	Peer   *netip.AddrPort `json:"peer"`
	CallID string          `json:"call_id"`
	Mux    bool            `json:"rtcp_mux"`
	// Held: a media binding of a held stream, which does not expire while its call lives.
	Held    bool      `json:"held"`
	Created time.Time `json:"created"`
	// LastTraffic is null before the first packet or message.
	LastTraffic *time.Time `json:"last_traffic"`
	// LeftSeconds is the lifetime left, rounded up; null when the binding does not expire.
	LeftSeconds *int64 `json:"left_seconds"`
	Counters
	// Quality is the call quality of what a media binding received ([Binding.SetQuality]);
	// absent when none was measured.
	Quality Quality `json:"quality,omitempty"`
}

// Snapshot returns the server map as it is now.
func (m *Map) Snapshot() Snapshot {
	now := m.Now()
	s := Snapshot{Time: m.timeOf(now).UTC()}
	var bs []*Binding
	m.mu.Lock()
	s.Calls = len(m.calls)
	for _, b := range m.sigs {
		bs = append(bs, b)
	}
	for _, c := range m.calls {
		for _, st := range c.streams {
			for _, l := range st.allLegs() {
				if l.rtp != nil {
					bs = append(bs, l.rtp, l.rtcp)
				}
			}
		}
	}
	slices.SortFunc(bs, func(a, b *Binding) int { return cmp.Compare(a.seq, b.seq) })
	s.Bindings = make([]Entry, len(bs))
	for i, b := range bs {
		s.Bindings[i] = m.entryLocked(b, now)
	}
	m.mu.Unlock()
	s.MediaPorts = usage(m.cfg.MediaPorts, m.mediaPool)
	s.SignalingPorts = usage(m.cfg.SignalingPorts, m.sigPool)
	return s
}

func usage(r PortRange, p *pool) PortUsage {
	free, used := p.usage()
	return PortUsage{First: r.First, Last: r.Last, InUse: used * int(p.step), Free: free * int(p.step)}
}

func (m *Map) entryLocked(b *Binding, now int64) Entry {
	e := Entry{
		Type:      b.typ,
		Protocol:  b.Protocol(),
		Transport: b.transport,
		Faces:     b.faces,
		Address:   b.addr,
		ForwardTo: b.to,
		CallID:    b.callID,
		Mux:       b.Mux(),
		Created:   m.timeOf(b.created).UTC(),
		Counters:  b.Counters(),
	}
	if p, ok := b.Peer(); ok {
		e.Peer = &p
	}
	if q := b.quality.Load(); q != nil {
		e.Quality = *q
	}
	if t, ok := b.LastTraffic(); ok {
		t = t.UTC()
		e.LastTraffic = &t
	}
	var at int64
	if b.sig != nil {
		at, _ = m.deadlineLocked(&b.sig.sched)
	} else {
		at, _ = m.deadlineLocked(&b.st.sched)
		e.Held = at == never
	}
	if at != never {
		left := max(0, (at-now+int64(time.Second)-1)/int64(time.Second))
		e.LeftSeconds = &left
	}
	return e
}

// WriteServerMap writes the server map in the vendors' shape, one line per binding:
//
//	Type: ALG, ANY -> 1.1.1.10:3334[192.168.1.1:3000], Protocol: udp(Appro: sip-rtp), Left-Time: 00:00:50
//
// A media binding shows its latched peer in place of ANY; a sip binding accepts any peer and
// always shows ANY. A binding that does not expire shows Left-Time: --:--:--.
func (s Snapshot) WriteServerMap(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, e := range s.Bindings {
		peer := "ANY"
		if e.Peer != nil && e.Type != TypeSIP {
			peer = e.Peer.String()
		}
		left := "--:--:--"
		if e.LeftSeconds != nil {
			n := *e.LeftSeconds
			left = fmt.Sprintf("%02d:%02d:%02d", n/3600, n/60%60, n%60)
		}
		fmt.Fprintf(bw, "Type: ALG, %s -> %s[%s], Protocol: %s(Appro: %s), Left-Time: %s\n",
			peer, e.Address, forwardTo(e), e.Protocol, e.Type, left)
	}
	return bw.Flush()
}

// WriteSessionTable writes the session table in the vendors' shape: one line per binding that
// carried traffic, the address it stands for, [its own address], and its peer, with the packets
// and bytes sent to the peer / received from it:
//
//	sip-rtp  192.168.1.1:3000[1.1.1.10:3334] --> 1.1.1.2:4000  pkts 1520/1519  bytes 261440/261268
//
// A media binding whose quality was measured ([Binding.SetQuality]) ends its line with it, the
// media relay's: "loss 0.00% jitter 0.4ms mos 4.41".
//
// Signaling sessions are drawn "+->" as the vendors draw a session with server-map entries.
func (s Snapshot) WriteSessionTable(w io.Writer) error {
	bw := bufio.NewWriter(w)
	for _, e := range s.Bindings {
		if e.PacketsSent == 0 && e.PacketsReceived == 0 {
			continue
		}
		peer, arrow := "ANY", "-->"
		if e.Peer != nil {
			peer = e.Peer.String()
		}
		if e.Type == TypeSIP {
			arrow = "+->"
		}
		fmt.Fprintf(bw, "%s  %s[%s] %s %s  pkts %d/%d  bytes %d/%d",
			e.Type, forwardTo(e), e.Address, arrow, peer,
			e.PacketsSent, e.PacketsReceived, e.BytesSent, e.BytesReceived)
		if e.Quality != nil {
			fmt.Fprintf(bw, "  %s", e.Quality)
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// forwardTo is the address an entry stands for, or "ANY" for an answer pair reserved with its
// offer that no answer took over yet.
func forwardTo(e Entry) string {
	if !e.ForwardTo.IsValid() || e.ForwardTo.Addr().IsUnspecified() {
		return "ANY"
	}
	return e.ForwardTo.String()
}
