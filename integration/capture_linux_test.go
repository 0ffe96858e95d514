package integration

import (
	"bytes"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"testing"
	"time"
)

// capture is tcpdump writing what crosses one interface of a namespace to a pcap file.
type capture struct {
	p      *proc
	path   string
	ns     *netns
	marker netip.AddrPort
}

// captureMarker starts the datagram that [capture.stop] sends through the interface: once it
// is in the file, so is everything that crossed before it (tcpdump drops what it has not
// written yet when it is stopped).
const captureMarker = "sipcar-integration-capture-end"

// capture starts tcpdump on iface inside ns and returns once it listens. marker is an address
// beyond iface (a peer on its link) that stop sends its end marker to.
func (tb *testbed) capture(ns *netns, iface string, marker netip.AddrPort) *capture {
	tb.t.Helper()
	bin := needProgram(tb.t, "tcpdump", "tcpdump")
	name := "tcpdump-" + iface
	dir := tb.workdir(name)
	path := filepath.Join(dir, iface+".pcap")
	// -Z root: tcpdump would otherwise drop to its own user and could not write here.
	p := tb.start(ns, name, procOpts{dir: dir}, bin, "-Z", "root", "-i", iface, "-n", "-U", "-w", path)
	p.waitOutput(tb.t, regexp.MustCompile(`listening on `+regexp.QuoteMeta(iface)), 10*time.Second)
	return &capture{p: p, path: path, ns: ns, marker: marker}
}

// stop sends the end marker through the interface, waits until tcpdump has written it, ends
// the capture and returns its UDP and TCP packets (without the marker).
func (c *capture) stop(t testing.TB) []packet {
	t.Helper()
	// Unconnected: the ICMP port unreachable that each marker draws must not fail the next.
	var conn *net.UDPConn
	err := c.ns.do(func() error {
		var err error
		conn, err = net.ListenUDP("udp", nil)
		return err
	})
	if err != nil {
		t.Fatalf("capture marker: %v", err)
	}
	defer conn.Close()
	marked := func(pkts []packet) bool {
		for _, p := range pkts {
			if bytes.HasPrefix(p.payload, []byte(captureMarker)) {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := conn.WriteToUDPAddrPort([]byte(captureMarker), c.marker); err != nil {
			t.Fatalf("capture marker: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
		if pkts, err := readPcap(c.path); err == nil && marked(pkts) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("tcpdump did not write the end marker within 5 s: the capture may miss packets")
			break
		}
	}
	c.p.stop(syscall.SIGINT)
	pkts, err := readPcap(c.path)
	if err != nil {
		t.Fatalf("read capture: %v", err)
	}
	return slices.DeleteFunc(pkts, func(p packet) bool { return bytes.HasPrefix(p.payload, []byte(captureMarker)) })
}

// sipStartLine matches the start line of a SIP request or response.
var sipStartLine = regexp.MustCompile(`^(SIP/2\.0 \d{3} |[A-Z]+ \S+ SIP/2\.0\r?\n)`)

// sipMessages returns the SIP messages of a capture: the payloads that start with a SIP start
// line. Over TCP, each segment of these small messages holds whole messages.
func sipMessages(pkts []packet) [][]byte {
	var msgs [][]byte
	for _, p := range pkts {
		if sipStartLine.Match(p.payload) {
			msgs = append(msgs, p.payload)
		}
	}
	return msgs
}

// countStartLines counts the SIP messages that start with prefix ("INVITE ", "SIP/2.0 200").
func countStartLines(msgs [][]byte, prefix string) int {
	n := 0
	for _, m := range msgs {
		if bytes.HasPrefix(m, []byte(prefix)) {
			n++
		}
	}
	return n
}
