package hep

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkSend is what capturing one SIP message costs the goroutine that relays it: encoding
// it into a pooled buffer and queueing it, with the writer running against a UDP collector on
// loopback. Paced at 1,000 packets a second (rate=1000, where ns/op is the pace) its own time is
// send-ns/op. sent/op and dropped/op count what reached the collector's socket and what the
// full queue dropped. Flat out (rate=max) Send outruns the writer: sent/op over ns/op is then
// the writer's capacity in packets a second, and send-ns/op shows that a full queue costs Send
// nothing more (it drops and counts).
func BenchmarkSend(b *testing.B) {
	for _, rate := range []int{0, 1000} {
		name := "rate=max"
		if rate > 0 {
			name = "rate=1000"
		}
		b.Run(name, func(b *testing.B) { benchSend(b, rate) })
	}
}

func benchSend(b *testing.B, rate int) {
	col, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer col.Close()
	reg := prometheus.NewRegistry()
	e, err := New(Config{Collector: col.LocalAddr().(*net.UDPAddr).AddrPort(), AgentID: 1, Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	p := Packet{Src: netip.MustParseAddrPort("198.18.0.10:5060"), Dst: netip.MustParseAddrPort("198.51.100.1:5060"),
		Transport: UDP, Proto: ProtoSIP, Correlation: "0000000000@bench",
		Payload: []byte(strings.Repeat("INVITE sip:100@198.51.100.1 SIP/2.0\r\n", 16))}
	b.SetBytes(int64(len(p.Payload)))
	b.ReportAllocs()
	var sending time.Duration
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		}
		t0 := time.Now()
		p.Time = t0
		e.Send(p)
		sending += time.Since(t0)
	}
	b.StopTimer()
	cancel() // Run writes what is still queued before it returns
	<-done
	n := float64(b.N)
	b.ReportMetric(float64(sending.Nanoseconds())/n, "send-ns/op")
	b.ReportMetric(counter(b, reg, "sent")/n, "sent/op")
	b.ReportMetric(counter(b, reg, "dropped")/n, "dropped/op")
}
