package relay

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sipcar/sipcar/pinhole"
	"github.com/sipcar/sipcar/relay/hep"
)

// BenchmarkHugeRegister is what one REGISTER naming 1,500 Contacts (46 KB) costs sipcar: refused
// by the Contact cap before anything is rewritten or bound. Run it with -benchtime=1x to see the
// first such message's cost on a fresh relay (the one that would bind every Contact).
func BenchmarkHugeRegister(b *testing.B) {
	bed := newLoopbed(b, func(c *Config) {
		c.MaxErrorReplyRate = -1
		c.Map.SignalingPorts = pinhole.PortRange{First: 40000, Last: 49999}
	})
	var contacts []string
	for i := range 1500 {
		contacts = append(contacts, fmt.Sprintf("<sip:user%d@127.0.0.%d:%d;transport=udp>;expires=3600", i, 3+i%2, 6000+i))
	}
	phone := addrOf(bed.phone)
	msg := []byte(strings.ReplaceAll(fmt.Sprintf("REGISTER sip:127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKhuge\n"+
		"From: <sip:200@127.0.0.1>;tag=r\nTo: <sip:200@127.0.0.1>\nCall-ID: huge\nCSeq: 1 REGISTER\nMax-Forwards: 70\n"+
		"Contact: %s\nContent-Length: 0\n\n", bed.sip.Port(), phone, strings.Join(contacts, ", ")), "\n", "\r\n"))
	in := inbound{transport: "udp", src: phone, local: bed.sip, listener: true}
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		bed.r.handle(in, msg)
	}
	b.StopTimer()
	b.ReportMetric(float64(bed.r.m.Snapshot().SignalingPorts.InUse), "sip-ports")
}

// BenchmarkRelayMessage is what relaying one out-of-dialog request from the phone to the PBX
// costs, every request a new transaction, without and with HEP export (the message as received
// and as sent, encoded and queued for a collector on loopback). It runs flat out, and paced at
// 1,000 messages a second, the rate, where a message's own time (ns/op is then the
// pace) is handle-ns/op. cpu-ns/op is the whole process's CPU per message, the export's writer
// included; with export, hep-sent/op and hep-dropped/op count what reached the collector's
// socket and what the full queue dropped (2 sent per message when export keeps up).
func BenchmarkRelayMessage(b *testing.B) {
	for _, rate := range []int{0, 1000} {
		for _, capture := range []bool{false, true} {
			name := fmt.Sprintf("rate=max/capture=%v", capture)
			if rate > 0 {
				name = fmt.Sprintf("rate=%d/capture=%v", rate, capture)
			}
			b.Run(name, func(b *testing.B) { benchRelayMessage(b, rate, capture) })
		}
	}
}

func benchRelayMessage(b *testing.B, rate int, capture bool) {
	var exp *hep.Exporter
	reg := prometheus.NewRegistry()
	if capture {
		col, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		defer col.Close()
		if exp, err = hep.New(hep.Config{Collector: addrOf(col), AgentID: 1, Registerer: reg}); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { _ = exp.Run(ctx) }()
	}
	bed := newLoopbed(b, func(c *Config) {
		if exp != nil {
			c.Capture = exp
		}
	})
	phone := addrOf(bed.phone)
	msg := []byte(strings.ReplaceAll(fmt.Sprintf("OPTIONS sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK0000000000\n"+
		"From: <sip:200@127.0.0.1>;tag=o\nTo: <sip:100@127.0.0.1>\nCall-ID: 0000000000@bench\nCSeq: 1 OPTIONS\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\nContent-Length: 0\n\n", bed.sip.Port(), phone, phone), "\n", "\r\n"))
	branch := bytes.Index(msg, []byte("z9hG4bK")) + 7
	callID := bytes.Index(msg, []byte("Call-ID: ")) + 9
	in := inbound{transport: "udp", src: phone, local: bed.sip, listener: true}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	var handling time.Duration
	b.ResetTimer()
	cpu0, start := processCPU(), time.Now()
	for i := range b.N {
		if rate > 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		}
		// A new transaction and call each time: the digits written in place.
		for j, k := 9, i; j >= 0; j, k = j-1, k/10 {
			msg[branch+j], msg[callID+j] = byte('0'+k%10), byte('0'+k%10)
		}
		t0 := time.Now()
		bed.r.handle(in, msg)
		handling += time.Since(t0)
	}
	if capture { // the writer finishes the queue: its work is part of the cost
		for deadline := time.Now().Add(5 * time.Second); hepPackets(b, reg, "sent")+hepPackets(b, reg, "dropped")+
			hepPackets(b, reg, "failed") < float64(2*b.N) && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	cpu := processCPU() - cpu0
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/op")
	b.ReportMetric(float64(handling.Nanoseconds())/n, "handle-ns/op")
	if capture {
		b.ReportMetric(hepPackets(b, reg, "sent")/n, "hep-sent/op")
		b.ReportMetric(hepPackets(b, reg, "dropped")/n, "hep-dropped/op")
	}
}

// hepPackets reads one result of sipcar_hep_packets_total from reg.
func hepPackets(b *testing.B, reg *prometheus.Registry, result string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sipcar_hep_packets_total" {
			continue
		}
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
