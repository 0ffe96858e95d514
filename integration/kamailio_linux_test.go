package integration

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// startKamailio runs kamailio with testdata/kamailio.cfg (a registrar and record-routing proxy
// on 198.18.0.10:5060) inside ns and waits until it answers OPTIONS. It is stopped in
// t.Cleanup; the namespace's removal takes its children.
func (tb *testbed) startKamailio(ns *netns) *proc {
	tb.t.Helper()
	return tb.startKamailioAt(ns, pbxAddr)
}

// kamailioListen is the listen line of testdata/kamailio.cfg, which startKamailioAt replaces.
const kamailioListen = "listen=udp:198.18.0.10:5060"

// kamailioRoutes starts the routing blocks of testdata/kamailio.cfg: extra global settings
// (modparam lines) go before it.
const kamailioRoutes = "request_route {"

// startKamailioAt is [testbed.startKamailio] with kamailio listening on addr:5060 only (an
// IPv6 address is written as kamailio wants it, in brackets), and the global settings of
// extra (`modparam("registrar", "min_expires", 5)`) added to the configuration.
func (tb *testbed) startKamailioAt(ns *netns, addr netip.Addr, extra ...string) *proc {
	tb.t.Helper()
	bin := needProgram(tb.t, "kamailio", "kamailio")
	dir := tb.workdir("kamailio")
	src, err := os.ReadFile(filepath.Join("testdata", "kamailio.cfg"))
	if err != nil {
		tb.t.Fatal(err)
	}
	if !bytes.Contains(src, []byte(kamailioListen)) {
		tb.t.Fatalf("testdata/kamailio.cfg has no line %q to put the address in", kamailioListen)
	}
	kam := netip.AddrPortFrom(addr, 5060)
	src = bytes.Replace(src, []byte(kamailioListen), []byte("listen=udp:"+kam.String()), 1)
	if len(extra) > 0 {
		if !bytes.Contains(src, []byte(kamailioRoutes)) {
			tb.t.Fatalf("testdata/kamailio.cfg has no %q to put the extra settings before", kamailioRoutes)
		}
		src = bytes.Replace(src, []byte(kamailioRoutes), []byte(strings.Join(extra, "\n")+"\n\n"+kamailioRoutes), 1)
	}
	cfg := filepath.Join(dir, "kamailio.cfg")
	if err := os.WriteFile(cfg, src, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	// -DD: stay in the foreground; -E: log to stderr; small shared and private memory; its
	// runtime files (control sockets, pid) in the test's directory.
	p := tb.start(ns, "kamailio", procOpts{dir: dir}, bin, "-f", cfg, "-DD", "-E", "-m", "32", "-M", "4",
		"-Y", dir, "-P", filepath.Join(dir, "kamailio.pid"), "-w", dir)

	probe := tb.udpPeer(ns, netip.AddrPortFrom(addr, 5099))
	for i := 0; ; i++ {
		if p.exited() {
			tb.t.Fatalf("kamailio exited at start:\n%s", firstLines(p.output(), 60))
		}
		probe.send(tb.t, kam, buildSIP(fmt.Sprintf("OPTIONS sip:%v SIP/2.0", kam), []string{
			fmt.Sprintf("Via: SIP/2.0/UDP %v;branch=z9hG4bKprobe%d", probe.addr, i),
			fmt.Sprintf("From: <sip:probe@%v>;tag=probe", kam), fmt.Sprintf("To: <sip:%v>", kam),
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
