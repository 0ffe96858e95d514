package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/pion/rtcp"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/relay/hep"
)

// capturedPackets is a Capturer that keeps what it is sent.
type capturedPackets struct {
	mu   sync.Mutex
	pkts []hep.Packet
}

func (c *capturedPackets) Send(p hep.Packet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p.Payload = slices.Clone(p.Payload)
	c.pkts = append(c.pkts, p)
}

func (c *capturedPackets) of(proto uint8) []hep.Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []hep.Packet
	for _, p := range c.pkts {
		if p.Proto == proto {
			out = append(out, p)
		}
	}
	return out
}

// A call's RTCP goes to the HEP collector as Homer's JSON (type 5) under the Call-ID, and when
// the call ends each leg that carried media gets a final quality report (type 34) with what the
// relay counted.
func TestCaptureRTCPAndQuality(t *testing.T) {
	capt := &capturedPackets{}
	b := newLoopbed(t, func(c *Config) { c.Capture = capt })
	phone := addrOf(b.phone)
	phoneRTP, phoneRTCP := listenRTP(t, "127.0.0.3"), listenRTP(t, "127.0.0.3")
	pbxRTP := listenRTP(t, "127.0.0.2")
	b.send(b.phone, b.sip, withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKq1\n"+
		"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: q1\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\n", b.sip.Port(), phone, phone), sdp("127.0.0.3", int(addrOf(phoneRTP).Port()))))
	m, src := b.recv(b.pbx)
	via := m.(*sip.Request).Via().Value()
	b.send(b.pbx, src, withBody(fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: q1\nCSeq: 1 INVITE\nContact: <sip:100@%s>\n", via, addrOf(b.pbx)), sdp("127.0.0.2", int(addrOf(pbxRTP).Port()))))
	ok, _ := b.recv(b.phone)
	relayRTP := sdpAddr(t, string(ok.Body()))

	// 10 packets with sequence numbers 1-10, 3 and 4 missing: 8 arrive, 2 lost.
	pkt := append([]byte{0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7}, bytes.Repeat([]byte{1}, 160)...)
	sent := 0
	for seq := 1; seq <= 10; seq++ {
		if seq == 3 || seq == 4 {
			continue
		}
		pkt[3], pkt[7] = byte(seq), byte(seq*160)
		if _, err := phoneRTP.WriteToUDPAddrPort(pkt, relayRTP); err != nil {
			t.Fatal(err)
		}
		sent++
	}
	buf := make([]byte, 2048)
	for i := range sent {
		_ = pbxRTP.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := pbxRTP.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("the phone's RTP packet %d did not reach the PBX: %v", i+1, err)
		}
	}
	sr, err := rtcp.Marshal([]rtcp.Packet{&rtcp.SenderReport{SSRC: 7, NTPTime: 0xe8c0_0000_8000_0000, RTPTime: 1600, PacketCount: 8, OctetCount: 1280}})
	if err != nil {
		t.Fatal(err)
	}
	relayRTCP := netip.AddrPortFrom(relayRTP.Addr(), relayRTP.Port()+1)
	if _, err := phoneRTCP.WriteToUDPAddrPort(sr, relayRTCP); err != nil {
		t.Fatal(err)
	}
	eventuallyOK(t, func() bool { return len(capt.of(hep.ProtoRTCP)) == 1 }, "the phone's sender report exported")
	if t.Failed() {
		t.FailNow()
	}
	r := capt.of(hep.ProtoRTCP)[0]
	var report struct {
		Type   int    `json:"type"`
		SSRC   uint32 `json:"ssrc"`
		Sender struct {
			Packets uint32 `json:"packets"`
		} `json:"sender_information"`
	}
	if err := json.Unmarshal(r.Payload, &report); err != nil {
		t.Fatalf("RTCP payload %s: %v", r.Payload, err)
	}
	if r.Correlation != "q1" || r.Src != addrOf(phoneRTCP) || r.Dst != relayRTCP || report.Type != 200 || report.SSRC != 7 || report.Sender.Packets != 8 {
		t.Errorf("RTCP export: %v -> %v correlation %q: %s", r.Src, r.Dst, r.Correlation, r.Payload)
	}
	if n := len(capt.of(hep.ProtoReport)); n != 0 {
		t.Errorf("%d quality reports while the call goes on; want them at its end", n)
	}

	b.send(b.phone, b.sip, fmt.Sprintf("BYE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKq2\nFrom: <sip:200@127.0.0.1>;tag=p1\n"+
		"To: <sip:100@127.0.0.1>;tag=x1\nCall-ID: q1\nCSeq: 2 BYE\nMax-Forwards: 70\nContent-Length: 0\n\n", b.sip.Port(), phone))
	m, src = b.recv(b.pbx)
	b.send(b.pbx, src, fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: q1\nCSeq: 2 BYE\nContent-Length: 0\n\n", m.(*sip.Request).Via().Value()))
	b.recv(b.phone)
	eventuallyOK(t, func() bool { return len(capt.of(hep.ProtoReport)) > 0 }, "the call's quality report")
	reports := capt.of(hep.ProtoReport)
	if len(reports) != 1 {
		t.Fatalf("%d quality reports; want one, for the phone's leg (the PBX sent nothing)", len(reports))
	}
	var q mediarelay.QualityReport
	if err := json.Unmarshal(reports[0].Payload, &q); err != nil {
		t.Fatal(err)
	}
	if reports[0].Correlation != "q1" || reports[0].Src != addrOf(phoneRTP) || reports[0].Dst != relayRTP || q.CallID != "q1" {
		t.Errorf("quality report %v -> %v correlation %q: %s", reports[0].Src, reports[0].Dst, reports[0].Correlation, reports[0].Payload)
	}
	if q.TotalPackets != 8 || q.PacketLoss != 2 || q.Type != "HANGUP" {
		t.Errorf("quality report lacks 8 packets, 2 lost, final: %s", reports[0].Payload)
	}
}
