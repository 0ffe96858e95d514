package pinhole

import (
	"net/netip"
	"runtime"
	"strconv"
	"testing"
)

// BenchmarkAllocateRelease: one call's offer pair allocated, committed and released, with the
// Map's own work only (reservations hold nothing).
func BenchmarkAllocateRelease(b *testing.B) {
	m, _ := newTestMap(b, Config{ReserveMedia: nopReserve, ReserveSignaling: nopReserve})
	req := MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")}
	for b.Loop() {
		tx := m.Begin("a84b4c76e66710@198.18.0.10", netip.Addr{})
		if _, err := tx.Media(req); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
		m.ReleaseCall("a84b4c76e66710@198.18.0.10", ReasonCallEnded)
	}
}

// activeCalls fills m with n calls, each an offer from inside and an answer from outside: two
// pairs, four bindings.
func activeCalls(tb testing.TB, m *Map, n int) []uint16 {
	ports := make([]uint16, 0, 4*n)
	for i := range n {
		id := "call-" + strconv.Itoa(i) + "@198.18.0.10"
		tx := m.Begin(id, netip.Addr{})
		p, err := tx.Media(MediaRequest{From: Inside, RTP: ap("198.18.0.10:3000")})
		if err != nil {
			tb.Fatal(err)
		}
		q, err := tx.Media(MediaRequest{From: Outside, RTP: ap("203.0.113.2:4000")})
		if err != nil {
			tb.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			tb.Fatal(err)
		}
		ports = append(ports, p.RTP.Port(), p.RTCPPort, q.RTP.Port(), q.RTCPPort)
	}
	return ports
}

// BenchmarkLookupMedia: the media hot path, a binding by its public port among 10,000 calls.
func BenchmarkLookupMedia(b *testing.B) {
	m, _ := newTestMap(b, Config{ReserveMedia: nopReserve, ReserveSignaling: nopReserve, MediaPorts: PortRange{10000, 59999}, SignalingPorts: PortRange{60000, 60999}})
	ports := activeCalls(b, m, 10_000)
	i := 0
	for b.Loop() {
		if m.LookupMedia(ports[i]) == nil {
			b.Fatal("lookup failed")
		}
		i++
		if i == len(ports) {
			i = 0
		}
	}
}

// BenchmarkPacket: what the media relay does per packet with the Map: look up, check the
// latched peer, count it in, find the partner, count it out.
func BenchmarkPacket(b *testing.B) {
	m, _ := newTestMap(b, Config{ReserveMedia: nopReserve, ReserveSignaling: nopReserve, MediaPorts: PortRange{10000, 59999}, SignalingPorts: PortRange{60000, 60999}})
	ports := activeCalls(b, m, 10_000)
	src := ap("203.0.113.2:4000")
	for _, p := range ports {
		m.LookupMedia(p).SetPeer(src)
	}
	now := m.Now()
	i := 0
	for b.Loop() {
		bd := m.LookupMedia(ports[i])
		if peer, ok := bd.Peer(); !ok || peer != src {
			b.Fatal("peer")
		}
		bd.Received(172, now)
		if p := bd.Partner(); p != nil {
			p.Sent(172, now)
		}
		i++
		if i == len(ports) {
			i = 0
		}
	}
}

// BenchmarkMemoryPerCall reports the heap the Map holds per active call at 10,000 calls (two
// pairs each, offer and answer, no sip bindings; reservations hold nothing, so sockets are not
// counted).
func BenchmarkMemoryPerCall(b *testing.B) {
	const calls = 10_000
	for b.Loop() {
		b.StopTimer()
		before := heapInUse()
		m, err := New(Config{Inside: testInside, Public: testPublic, ReserveMedia: nopReserve, ReserveSignaling: nopReserve, MediaPorts: PortRange{10000, 59999}, SignalingPorts: PortRange{60000, 60999}})
		if err != nil {
			b.Fatal(err)
		}
		empty := heapInUse()
		b.StartTimer()
		activeCalls(b, m, calls)
		b.StopTimer()
		full := heapInUse()
		b.ReportMetric(float64(full-empty)/calls, "bytes/call")
		b.ReportMetric(float64(empty-before), "bytes/map")
		m.Close()
		runtime.KeepAlive(m)
		b.StartTimer()
	}
}
