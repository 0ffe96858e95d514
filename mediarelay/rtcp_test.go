package mediarelay

import (
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtcp"
)

// compound marshals RTCP packets into one compound packet, as a phone sends them.
func compound(t testing.TB, pkts ...rtcp.Packet) []byte {
	t.Helper()
	b, err := rtcp.Marshal(pkts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sdes(ssrc uint32) *rtcp.SourceDescription {
	return &rtcp.SourceDescription{Chunks: []rtcp.SourceDescriptionChunk{{Source: ssrc,
		Items: []rtcp.SourceDescriptionItem{{Type: rtcp.SDESCNAME, Text: "phone@198.18.0.2"}}}}}
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRTCPReader(t *testing.T) {
	block := rtcp.ReceptionReport{SSRC: 0xb0b, FractionLost: 64, TotalLost: 17, LastSequenceNumber: 70000,
		Jitter: 80, LastSenderReport: 0x12345678, Delay: 0x8000}
	tests := []struct {
		name   string
		pkt    []byte
		ok     bool
		sender uint32
		isSR   bool
		ntp    uint64
		blocks int
	}{
		{"SR with a block and SDES", compound(t, &rtcp.SenderReport{SSRC: 0xa11ce, NTPTime: 0xe1234567_89abcdef,
			RTPTime: 4242, PacketCount: 100, OctetCount: 16000, Reports: []rtcp.ReceptionReport{block}}, sdes(0xa11ce)), true, 0xa11ce, true, 0xe1234567_89abcdef, 1},
		{"RR with two blocks and SDES", compound(t, &rtcp.ReceiverReport{SSRC: 0xa11ce,
			Reports: []rtcp.ReceptionReport{{SSRC: 0xc0c}, block}}, sdes(0xa11ce)), true, 0xa11ce, false, 0, 2},
		{"RR without blocks", compound(t, &rtcp.ReceiverReport{SSRC: 7}), true, 7, false, 0, 0},
		{"reduced size: SDES then RR", compound(t, sdes(9), &rtcp.ReceiverReport{SSRC: 9, Reports: []rtcp.ReceptionReport{block}}), true, 9, false, 0, 1},
		{"BYE only", compound(t, &rtcp.Goodbye{Sources: []uint32{5}}), false, 0, false, 0, 0},
		{"empty", nil, false, 0, false, 0, 0},
		{"truncated SR", compound(t, &rtcp.SenderReport{SSRC: 1, Reports: []rtcp.ReceptionReport{block}})[:30], false, 0, false, 0, 0},
		{"length beyond the datagram", unhex(t, "80c9 00ff 0000 0001"), false, 0, false, 0, 0},
		{"version 1", unhex(t, "40c9 0001 0000 0001"), false, 0, false, 0, 0},
		{"count larger than the blocks", unhex(t, "82c9 0007 0000 0001 0000 0b0b 4000 0011 0001 1170 0000 0050 1234 5678 0000 8000"), false, 0, false, 0, 0},
		{"RTP", rtpPacket(1, 0, 0xa, 0), false, 0, false, 0, 0},
	}
	rd := newRTCPReader()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok := rd.read(tt.pkt)
			if ok != tt.ok {
				t.Fatalf("read = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if rd.sender != tt.sender || rd.isSR != tt.isSR || rd.ntp != tt.ntp || len(rd.blocks) != tt.blocks {
				t.Errorf("sender %#x SR %v NTP %#x blocks %d, want %#x %v %#x %d", rd.sender, rd.isSR, rd.ntp, len(rd.blocks),
					tt.sender, tt.isSR, tt.ntp, tt.blocks)
			}
			if n := len(rd.blocks); n > 0 && rd.blocks[n-1] != block {
				t.Errorf("last block %+v, want %+v", rd.blocks[n-1], block)
			}
		})
	}
}

// RTCP that baresip 1.0.0 (Debian's baresip-core) sent through sipcar in the integration lab
// (TestBaresipCall, captured on the outside phone's wire): bob's compound SR (an SR with one
// report block, SDES CNAME) as sipcar relayed it to alice, alice's compound SR 8.317 ms later
// whose block names it (LSR 0x6cc76434, DLSR 0x20c: 7.995 ms), alice's BYE with SDES, and the
// APP packet baresip sends first (PING).
const (
	baresipBobSR = `
81c8 000c b94d db98 eebe 6cc7 6434 19e3 0001 47a7 0000 00fa 0000 9c40 d51d 3e25
0000 0000 0000 32a9 0000 0046 0000 0000 0000 0000 81ca 0007 b94d db98 0114 7369
703a 626f 6240 3139 382e 3531 2e31 3030 2e31 0000`
	baresipAliceSR = `
81c8 000c d51d 3e25 eebe 6cc7 665a 89b9 0001 6ca5 0000 00fa 0000 9c40 b94d db98
0000 0000 0000 54e2 0000 003f 6cc7 6434 0000 020c 81ca 0008 d51d 3e25 0116 7369
703a 616c 6963 6540 3139 382e 3531 2e31 3030 2e31 0000 0000`
	baresipBye = `
81cb 0003 d51d 3e25 0441 646a 6f00 0000 81ca 0008 d51d 3e25 0116 7369 703a 616c
6963 6540 3139 382e 3531 2e31 3030 2e31 0000 0000`
	baresipPing = `80cc 0003 d51d 3e25 5049 4e47 504f 4e47`
)

func TestRTCPBaresip(t *testing.T) {
	rd := newRTCPReader()
	for _, tt := range []struct {
		name string
		pkt  string
		ok   bool
	}{{"bob's SR", baresipBobSR, true}, {"alice's SR", baresipAliceSR, true}, {"BYE", baresipBye, false}, {"APP", baresipPing, false}} {
		pkt := unhex(t, tt.pkt)
		if ok := rd.read(pkt); ok != tt.ok {
			t.Errorf("%s: read = %v, want %v", tt.name, ok, tt.ok)
			continue
		}
		// pion's full parse of the compound agrees.
		pkts, err := rtcp.Unmarshal(pkt)
		if err != nil {
			t.Fatalf("%s: rtcp.Unmarshal: %v", tt.name, err)
		}
		if sr, ok := pkts[0].(*rtcp.SenderReport); ok != tt.ok || (ok && (sr.SSRC != rd.sender || sr.NTPTime != rd.ntp || len(sr.Reports) != len(rd.blocks))) {
			t.Errorf("%s: relay read %#x %#x %d blocks, pion %+v", tt.name, rd.sender, rd.ntp, len(rd.blocks), pkts[0])
		}
	}

	// bob's SR relayed to alice, alice's report on it: the round trip is the 8.317 ms between
	// them, less the 7.995 ms alice says she held it.
	var alice, bob rtcpLeg
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	if !rd.read(unhex(t, baresipBobSR)) {
		t.Fatal("bob's SR not read")
	}
	alice.relayedSR(rd.sender, rd.ntp, t0)
	bob.report(rd.blocks, 0xd51d3e25, 8000, t0)
	if !rd.read(unhex(t, baresipAliceSR)) {
		t.Fatal("alice's SR not read")
	}
	bob.relayedSR(rd.sender, rd.ntp, t0+8317e3)
	alice.report(rd.blocks, 0xb94ddb98, 8000, t0+8317e3)
	var ls LegStats
	alice.snapshot(&ls)
	r := ls.Remote
	want := 8317*time.Microsecond - time.Duration(0x20c)*time.Second/65536
	if r.Reports != 1 || r.SSRC != 0xb94ddb98 || r.RTTSamples != 1 || r.RTT != want.Truncate(time.Nanosecond) || r.Jitter != 63*time.Second/8000 || r.CumulativeLost != 0 {
		t.Errorf("alice's report: %+v; want RTT %v, jitter 63 units at 8 kHz", r, want)
	}
	ls = LegStats{}
	bob.snapshot(&ls)
	if ls.Remote.Reports != 1 || ls.Remote.RTTSamples != 0 {
		t.Errorf("bob's report (LSR 0: no SR of alice's yet): %+v", ls.Remote)
	}
}

func TestRTCPJSON(t *testing.T) {
	got, err := RTCPJSON(unhex(t, baresipAliceSR))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"sender_information":{"ntp_timestamp_sec":4005457095,"ntp_timestamp_usec":1717209529,"rtp_timestamp":93349,` +
		`"packets":250,"octets":40000},"ssrc":3575463461,"type":200,"report_count":1,"report_blocks":[{"source_ssrc":3108887448,` +
		`"fraction_lost":0,"packets_lost":0,"highest_seq_no":21730,"ia_jitter":63,"lsr":1825006644,"dlsr":524}],"sdes_ssrc":3575463461}`
	if string(got) != want {
		t.Errorf("RTCPJSON:\n got %s\nwant %s", got, want)
	}
	for _, bad := range []string{baresipBye, baresipPing, "81c8 00ff"} {
		if _, err := RTCPJSON(unhex(t, bad)); err == nil {
			t.Errorf("RTCPJSON(%s) gave no error", bad)
		}
	}
}

func TestRTCPReaderAllocatesNothing(t *testing.T) {
	rd := newRTCPReader()
	blocks := make([]rtcp.ReceptionReport, maxReportBlocks)
	pkt := compound(t, &rtcp.SenderReport{SSRC: 1, Reports: blocks}, sdes(1))
	if n := testing.AllocsPerRun(100, func() { rd.read(pkt) }); n != 0 {
		t.Errorf("read of an SR with 31 blocks allocates %v times, want 0", n)
	}
	var l rtcpLeg
	if n := testing.AllocsPerRun(100, func() { l.report(rd.blocks, 1, 8000, 5) }); n != 0 {
		t.Errorf("report allocates %v times, want 0", n)
	}
}

func TestRTCPLegRoundTrip(t *testing.T) {
	var l rtcpLeg
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	// Sender reports relayed to the peer every 5 s; the NTP timestamps' middle 32 bits are what
	// LSR echoes.
	for i := range 6 {
		l.relayedSR(0xb0b, uint64(0x1000+i)<<32|0x8000_0000, t0+int64(i)*5e9)
	}
	// The peer answers SR 4 (relayed at t0+20s) after holding it 0.25 s (DLSR 0x4000), and the
	// answer arrives 0.31 s after the relay sent it: 60 ms of round trip.
	lsr := uint32((uint64(0x1004)<<32 | 0x8000_0000) >> 16)
	blocks := []rtcp.ReceptionReport{
		{SSRC: 0xdead, FractionLost: 255},
		{SSRC: 0xb0b, FractionLost: 26, TotalLost: 0xfffffe, Jitter: 240, LastSenderReport: lsr, Delay: 0x4000},
	}
	l.report(blocks, 0, 8000, t0+int64(20310*time.Millisecond))
	var ls LegStats
	l.snapshot(&ls)
	r := ls.Remote
	if r.Reports != 1 || r.SSRC != 0xb0b || r.CumulativeLost != -2 || r.Jitter != 30*time.Millisecond {
		t.Errorf("remote %+v, want the block about 0xb0b (the SR sender), cumulative -2, jitter 30 ms", r)
	}
	if r.FractionLost < 0.1 || r.FractionLost > 0.102 {
		t.Errorf("fraction lost %v, want 26/256", r.FractionLost)
	}
	if r.RTTSamples != 1 || r.RTT != 60*time.Millisecond || r.MaxRTT != 60*time.Millisecond {
		t.Errorf("RTT %v (max %v) over %d samples, want 60 ms over 1", r.RTT, r.MaxRTT, r.RTTSamples)
	}

	// An LSR the relay did not relay (too old, or from another path), and a DLSR longer than
	// the time away: no sample.
	l.report([]rtcp.ReceptionReport{{SSRC: 0xb0b, LastSenderReport: lsr + 99}}, 0, 8000, t0+int64(21*time.Second))
	l.report([]rtcp.ReceptionReport{{SSRC: 0xb0b, LastSenderReport: lsr, Delay: 0x10000}}, 0, 8000, t0+int64(20500*time.Millisecond))
	ls = LegStats{}
	l.snapshot(&ls)
	if ls.Remote.Reports != 3 || ls.Remote.RTTSamples != 1 {
		t.Errorf("%d reports, %d RTT samples; want 3 and still 1", ls.Remote.Reports, ls.Remote.RTTSamples)
	}
}

// FuzzRTCPRead feeds the relay's RTCP reading path arbitrary datagrams: it must never panic,
// and what it reads must be what pion's full parse of the same datagram says.
func FuzzRTCPRead(f *testing.F) {
	f.Add(unhex(f, baresipBobSR))
	f.Add(unhex(f, baresipAliceSR))
	f.Add(unhex(f, baresipBye))
	f.Add(compound(f, &rtcp.ReceiverReport{SSRC: 3, Reports: []rtcp.ReceptionReport{{SSRC: 4, LastSenderReport: 5, Delay: 6}}}, sdes(3)))
	f.Add(compound(f, sdes(9), &rtcp.SenderReport{SSRC: 9}))
	f.Add(unhex(f, "82c9 0007 0000 0001 0000 0b0b"))
	f.Add([]byte{0x80, 0xc8, 0, 0})
	rd := newRTCPReader()
	f.Fuzz(func(t *testing.T, pkt []byte) {
		_, _ = RTCPJSON(pkt)
		var l rtcpLeg
		if rd.read(pkt) {
			if len(rd.blocks) > maxReportBlocks {
				t.Fatalf("%d report blocks", len(rd.blocks))
			}
			if rd.isSR {
				l.relayedSR(rd.sender, rd.ntp, 1)
			}
			l.report(rd.blocks, rd.sender, 8000, 1e9)
			var ls LegStats
			l.snapshot(&ls)
			_ = ls.Quality().String()
			pkts, err := rtcp.Unmarshal(pkt)
			if err != nil {
				return // a later packet of the compound is broken; the relay read the first report
			}
			for _, p := range pkts {
				switch p := p.(type) {
				case *rtcp.SenderReport:
					if !rd.isSR || p.SSRC != rd.sender || p.NTPTime != rd.ntp || len(p.Reports) != len(rd.blocks) {
						t.Fatalf("relay read SR %v %#x %#x %d blocks, pion %+v", rd.isSR, rd.sender, rd.ntp, len(rd.blocks), p)
					}
					return
				case *rtcp.ReceiverReport:
					if rd.isSR || p.SSRC != rd.sender || len(p.Reports) != len(rd.blocks) {
						t.Fatalf("relay read RR %v %#x %d blocks, pion %+v", rd.isSR, rd.sender, len(rd.blocks), p)
					}
					return
				}
			}
			t.Fatalf("relay read a report, pion found none in %d packets", len(pkts))
		}
	})
}
