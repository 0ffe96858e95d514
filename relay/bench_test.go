package relay

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sipcar/sipcar/pinhole"
)

// BenchmarkHugeRegister is what one REGISTER naming 1,500 Contacts (46 KB) costs sipcar: refused
// by the Contact cap before anything is rewritten or bound. Run it with -benchtime=1x to see the
// first such message's cost on a fresh relay (the one that would bind every Contact).
func BenchmarkHugeRegister(b *testing.B) {
	bed := newLoopbed(&testing.T{}, func(c *Config) {
		c.MaxErrorReplyRate = -1
		c.Map.SignalingPorts = pinhole.PortRange{First: 40000, Last: 49999}
	})
	defer bed.r.m.Close()
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
