package hep

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// decode reads a HEPv3 packet into its chunks (type to data), as a collector does.
func decode(t *testing.T, b []byte) map[uint16][]byte {
	t.Helper()
	if len(b) < 6 || string(b[:4]) != "HEP3" || int(binary.BigEndian.Uint16(b[4:])) != len(b) {
		t.Fatalf("not a HEPv3 packet of its own length: % x", b[:min(len(b), 16)])
	}
	chunks := make(map[uint16][]byte)
	for i := 6; i < len(b); {
		if i+6 > len(b) {
			t.Fatalf("a chunk header cut at %d", i)
		}
		vendor, typ, n := binary.BigEndian.Uint16(b[i:]), binary.BigEndian.Uint16(b[i+2:]), int(binary.BigEndian.Uint16(b[i+4:]))
		if vendor != 0 || n < 6 || i+n > len(b) {
			t.Fatalf("chunk %d at %d: vendor %d, length %d of %d", typ, i, vendor, n, len(b))
		}
		chunks[typ] = b[i+6 : i+n]
		i += n
	}
	return chunks
}

func TestAppend(t *testing.T) {
	at := time.Unix(1700000000, 123456000)
	for _, tc := range []struct {
		name     string
		src, dst string
		fam      byte
		srcChunk uint16
	}{
		{"IPv4", "198.51.100.20:5060", "198.51.100.1:5060", 2, chunkSrc4},
		{"IPv6", "[2001:db8:b::20]:5060", "[2001:db8:b::1]:5060", 10, chunkSrc6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Packet{Src: netip.MustParseAddrPort(tc.src), Dst: netip.MustParseAddrPort(tc.dst), Transport: UDP,
				Time: at, Proto: ProtoSIP, Correlation: "call-1", Payload: []byte("OPTIONS sip:x SIP/2.0\r\n\r\n")}
			c := decode(t, Append(nil, p, 2001, "secret"))
			if c[chunkFamily][0] != tc.fam || c[chunkIPProto][0] != 17 || c[chunkProto][0] != ProtoSIP {
				t.Errorf("family %v, ip proto %v, proto %v", c[chunkFamily], c[chunkIPProto], c[chunkProto])
			}
			if got, _ := netip.AddrFromSlice(c[tc.srcChunk]); got != p.Src.Addr() {
				t.Errorf("source %v, want %v", got, p.Src.Addr())
			}
			if binary.BigEndian.Uint16(c[chunkSrcPort]) != 5060 || binary.BigEndian.Uint32(c[chunkSeconds]) != 1700000000 ||
				binary.BigEndian.Uint32(c[chunkMicros]) != 123456 || binary.BigEndian.Uint32(c[chunkAgentID]) != 2001 {
				t.Errorf("port, time or agent wrong: %v %v %v %v", c[chunkSrcPort], c[chunkSeconds], c[chunkMicros], c[chunkAgentID])
			}
			if string(c[chunkAuthKey]) != "secret" || string(c[chunkCorrelation]) != "call-1" || string(c[chunkPayload]) != string(p.Payload) {
				t.Errorf("auth %q, correlation %q, payload %q", c[chunkAuthKey], c[chunkCorrelation], c[chunkPayload])
			}
		})
	}
	huge := &Packet{Src: netip.MustParseAddrPort("198.51.100.20:5060"), Dst: netip.MustParseAddrPort("198.51.100.1:5060"), Payload: make([]byte, 70000)}
	if out := Append([]byte("x"), huge, 1, ""); string(out) != "x" {
		t.Errorf("a packet too large for HEP was appended (%d bytes)", len(out))
	}
}

// The exporter delivers to a UDP collector, and a full queue drops (counted) without blocking.
func TestExporter(t *testing.T) {
	col, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	reg := prometheus.NewRegistry()
	e, err := New(Config{Collector: col.LocalAddr().(*net.UDPAddr).AddrPort(), AgentID: 7, Queue: 2, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	p := &Packet{Src: netip.MustParseAddrPort("198.51.100.20:5060"), Dst: netip.MustParseAddrPort("198.51.100.1:5060"),
		Transport: UDP, Time: time.Now(), Proto: ProtoSIP, Payload: []byte("x")}
	for range 5 {
		e.Send(*p) // nobody drains yet: two wait, three are dropped
	}
	if got := counter(t, reg, "dropped"); got != 3 {
		t.Errorf("dropped %v, want 3", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	buf := make([]byte, 65535)
	for range 2 {
		_ = col.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := col.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("the collector got nothing: %v", err)
		}
		if c := decode(t, buf[:n]); string(c[chunkPayload]) != "x" {
			t.Errorf("payload %q", c[chunkPayload])
		}
	}
	cancel()
	<-done
	if got := counter(t, reg, "sent"); got != 2 {
		t.Errorf("sent %v, want 2", got)
	}
	var none *Exporter
	none.Send(*p) // a nil exporter (HEP off) takes anything
}

// Over TCP the writer sends the queue in batches (one writev each); the collector reads every
// packet, whole and in order, from the stream. What is queued when Run stops is written, not
// dropped, even when Run stops before it has written anything.
func TestExporterTCPStreamAndStop(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reg := prometheus.NewRegistry()
	const n = 3*maxBatch + 5 // more than one batch
	e, err := New(Config{Collector: ln.Addr().(*net.TCPAddr).AddrPort(), Network: "tcp", AgentID: 7, Queue: n, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		e.Send(Packet{Src: netip.MustParseAddrPort("198.51.100.20:5060"), Dst: netip.MustParseAddrPort("198.51.100.1:5060"),
			Transport: TCP, Time: time.Now(), Proto: ProtoSIP, Payload: []byte(strconv.Itoa(i))})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Run starts stopped: all it does is write what is queued
	if err := e.Run(ctx); err != context.Canceled {
		t.Errorf("Run: %v", err)
	}
	if got := counter(t, reg, "sent"); got != n {
		t.Errorf("sent %v, want %d", got, n)
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatalf("Run never connected: %v", err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	stream, err := io.ReadAll(conn) // Run closed its end
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; len(stream) > 0; i++ {
		if len(stream) < 6 {
			t.Fatalf("packet %d: %d bytes left", i, len(stream))
		}
		size := int(binary.BigEndian.Uint16(stream[4:]))
		if size > len(stream) {
			t.Fatalf("packet %d: length %d, %d bytes left", i, size, len(stream))
		}
		if got := string(decode(t, stream[:size])[chunkPayload]); got != strconv.Itoa(i) {
			t.Fatalf("packet %d carries %q", i, got)
		}
		if stream = stream[size:]; len(stream) == 0 && i != n-1 {
			t.Errorf("the collector read %d packets, want %d", i+1, n)
		}
	}
}

// A writer that has parked for want of packets is woken by the next one.
func TestExporterWakesAfterIdle(t *testing.T) {
	col, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	e, err := New(Config{Collector: col.LocalAddr().(*net.UDPAddr).AddrPort(), AgentID: 7})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	buf := make([]byte, 65535)
	for _, payload := range []string{"first", "after a quiet spell"} {
		e.Send(Packet{Src: netip.MustParseAddrPort("198.51.100.20:5060"), Dst: netip.MustParseAddrPort("198.51.100.1:5060"),
			Transport: UDP, Time: time.Now(), Proto: ProtoSIP, Payload: []byte(payload)})
		_ = col.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := col.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: the collector got nothing: %v", payload, err)
		}
		if got := string(decode(t, buf[:n])[chunkPayload]); got != payload {
			t.Fatalf("payload %q, want %q", got, payload)
		}
		time.Sleep(3 * idleLooks * flushInterval) // the writer parks
	}
}

// A UDP collector that is not listening refuses a datagram (the port unreachable the last
// one met comes back as an error on the next send): that one is counted as failed and the rest
// of its batch still goes.
func TestExporterRefusedDatagram(t *testing.T) {
	col, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := col.LocalAddr().(*net.UDPAddr).AddrPort()
	col.Close() // nobody listens on addr now
	reg := prometheus.NewRegistry()
	e, err := New(Config{Collector: addr, AgentID: 7, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	p := Packet{Src: netip.MustParseAddrPort("198.51.100.20:5060"), Dst: netip.MustParseAddrPort("198.51.100.1:5060"),
		Transport: UDP, Time: time.Now(), Proto: ProtoSIP, Payload: []byte("x")}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	e.Send(p) // sent, and answered with a port unreachable
	for deadline := time.Now().Add(5 * time.Second); counter(t, reg, "sent")+counter(t, reg, "failed") < 1; {
		if time.Now().After(deadline) {
			t.Fatal("the first packet was never written")
		}
		time.Sleep(time.Millisecond)
	}
	for range 5 {
		e.Send(p)
	}
	cancel()
	<-done
	sent, failed := counter(t, reg, "sent"), counter(t, reg, "failed")
	if failed < 1 || sent+failed != 6 {
		t.Errorf("sent %v, failed %v: want 6 in all, at least one refused", sent, failed)
	}
}

func counter(t testing.TB, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// What Append writes, Decode reads back, for both families, with and without an auth key.
func TestDecodeRoundTrip(t *testing.T) {
	for _, p := range []Packet{
		{Src: netip.MustParseAddrPort("198.51.100.20:5060"), Dst: netip.MustParseAddrPort("203.0.113.9:40001"), Transport: UDP,
			Time: time.Unix(1700000000, 123456000), Proto: ProtoSIP, Correlation: "call-1", Payload: []byte("INVITE sip:x SIP/2.0\r\n\r\n")},
		{Src: netip.MustParseAddrPort("[2001:db8::1]:5061"), Dst: netip.MustParseAddrPort("[2001:db8::2]:5060"), Transport: TCP,
			Time: time.Unix(1700000001, 0), Proto: ProtoLog, Payload: []byte(`{"a":1}`)},
	} {
		for _, key := range []string{"", "secret"} {
			got, agent, gotKey, err := Decode(Append(nil, &p, 42, key))
			if err != nil {
				t.Fatal(err)
			}
			if agent != 42 || gotKey != key || got.Src != p.Src || got.Dst != p.Dst || got.Transport != p.Transport ||
				!got.Time.Equal(p.Time) || got.Proto != p.Proto || got.Correlation != p.Correlation || string(got.Payload) != string(p.Payload) {
				t.Errorf("decoded %+v (agent %d, key %q), want %+v", got, agent, gotKey, p)
			}
		}
	}
	if _, _, _, err := Decode([]byte("HEP3\x00\x07\x00")); err == nil {
		t.Error("a truncated chunk decoded")
	}
}

// Decode never panics, and what it reads, Append writes so that it reads the same again.
func FuzzDecode(f *testing.F) {
	p := Packet{Src: netip.MustParseAddrPort("198.51.100.20:5060"), Dst: netip.MustParseAddrPort("[2001:db8::2]:5060"),
		Transport: UDP, Time: time.Unix(1, 0), Proto: ProtoSIP, Correlation: "c", Payload: []byte("x")}
	f.Add(Append(nil, &p, 1, "k"))
	f.Add([]byte("HEP3\x00\x06"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, agent, key, err := Decode(b)
		if err != nil || !got.Src.Addr().IsValid() || !got.Dst.Addr().IsValid() || got.Src.Addr().Is4() != got.Dst.Addr().Is4() {
			return
		}
		again, agent2, key2, err := Decode(Append(nil, &got, agent, key))
		if err != nil || again.Src != got.Src || again.Dst != got.Dst || agent2 != agent || key2 != key ||
			string(again.Payload) != string(got.Payload) || again.Correlation != got.Correlation {
			t.Fatalf("re-encoded %+v decoded as %+v (%v)", got, again, err)
		}
	})
}
