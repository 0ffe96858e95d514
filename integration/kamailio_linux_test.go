package integration

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"time"
)

// startKamailio runs kamailio with testdata/kamailio.cfg (a registrar and record-routing proxy
// on 198.18.0.10:5060) inside ns and waits until it answers OPTIONS. It is stopped in
// t.Cleanup; the namespace's removal takes its children.
func (tb *testbed) startKamailio(ns *netns) *proc {
	tb.t.Helper()
	bin := needProgram(tb.t, "kamailio", "kamailio")
	cfg, err := filepath.Abs(filepath.Join("testdata", "kamailio.cfg"))
	if err != nil {
		tb.t.Fatal(err)
	}
	dir := tb.workdir("kamailio")
	// -DD: stay in the foreground; -E: log to stderr; small shared and private memory; its
	// runtime files (control sockets, pid) in the test's directory.
	p := tb.start(ns, "kamailio", procOpts{dir: dir}, bin, "-f", cfg, "-DD", "-E", "-m", "32", "-M", "4",
		"-Y", dir, "-P", filepath.Join(dir, "kamailio.pid"), "-w", dir)

	probe := tb.udpPeer(ns, netip.AddrPortFrom(pbxAddr, 5099))
	kam := netip.AddrPortFrom(pbxAddr, 5060)
	for i := 0; ; i++ {
		if p.exited() {
			tb.t.Fatalf("kamailio exited at start:\n%s", firstLines(p.output(), 60))
		}
		probe.send(tb.t, kam, buildSIP("OPTIONS sip:198.18.0.10:5060 SIP/2.0", []string{
			fmt.Sprintf("Via: SIP/2.0/UDP 198.18.0.10:5099;branch=z9hG4bKprobe%d", i),
			"From: <sip:probe@198.18.0.10>;tag=probe", "To: <sip:198.18.0.10>",
			fmt.Sprintf("Call-ID: kamailio-probe-%d", i), "CSeq: 1 OPTIONS", "Max-Forwards: 70",
		}, ""))
		if _, err := probe.tryRecv(200*time.Millisecond, isResponse("OPTIONS", 200)); err == nil {
			break
		}
		if i > 100 {
			tb.t.Fatalf("kamailio did not answer OPTIONS within 20 s:\n%s", firstLines(p.output(), 60))
		}
	}
	return p
}
