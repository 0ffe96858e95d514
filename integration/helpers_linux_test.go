package integration

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startSipcarNamed starts a sipcar like [testbed.startSipcar], with its log in its own
// directory (name), for tests that run more than one sipcar in a namespace one after the
// other. It registers no check of how sipcar exits: the caller ends it and checks that (a
// SIGKILLed sipcar exits by a signal, which startSipcar's cleanup would count as a failure).
// Cleanup still kills it if it runs.
func (tb *testbed) startSipcarNamed(ns *netns, name string, env ...string) *sipcarProc {
	tb.t.Helper()
	s := tb.launchSipcar(ns, name, env...)
	s.waitReady(tb.t)
	return s
}

// checkLogClean fails the test if sipcar logged a data race or a panic.
func (s *sipcarProc) checkLogClean(t testing.TB) {
	t.Helper()
	out := s.output()
	if strings.Contains(out, "WARNING: DATA RACE") {
		t.Errorf("%s logged a data race (see its log)", s.name)
	}
	if strings.Contains(out, "panic:") {
		t.Errorf("%s panicked (see its log)", s.name)
	}
}

// readyStatus returns the HTTP status of /readyz, or an error when the admin endpoint does not
// answer.
func (s *sipcarProc) readyStatus() (int, error) {
	resp, err := s.client.Get(s.admin + "/readyz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// writeWorkFile writes a file into a program's working directory before the program starts
// (sipp reads its pcaps from there).
func (tb *testbed) writeWorkFile(program, file string, data []byte) {
	tb.t.Helper()
	dir := filepath.Join(tb.dir, program)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), data, 0o644); err != nil {
		tb.t.Fatal(err)
	}
}

// writeLongRTPPcap writes rtp.pcap with n packets (20 ms each) into a sipp's working directory
// before it starts: for calls whose media lasts longer than the harness's 2 s.
func (tb *testbed) writeLongRTPPcap(program string, n int) {
	tb.t.Helper()
	tmp := filepath.Join(tb.t.TempDir(), "rtp.pcap")
	if err := writeRTPPcap(tmp, n); err != nil {
		tb.t.Fatal(err)
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.writeWorkFile(program, "rtp.pcap", b)
}

// writeVideoPcap writes video.pcap into a sipp's working directory: rtp.pcap's 100 packets
// with payload type 96 and an SSRC of their own, for play_pcap_video (sipp does not play the
// file it plays as audio a second time as video).
func (tb *testbed) writeVideoPcap(program string) {
	tb.t.Helper()
	tmp := filepath.Join(tb.t.TempDir(), "video.pcap")
	if err := writeRTPPcap(tmp, 100); err != nil {
		tb.t.Fatal(err)
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		tb.t.Fatal(err)
	}
	// Records: a 16-byte header, then Ethernet (14), IPv4 (20), UDP (8) and RTP.
	for off := 24; off+16 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off+8:]))
		rtp := b[off+16+42 : off+16+n]
		rtp[1] = 96
		binary.BigEndian.PutUint32(rtp[8:], 0x71de0)
		off += 16 + n
	}
	tb.writeWorkFile(program, "video.pcap", b)
}

// rtcpReceiverReport is an RTCP receiver report (RFC 3550 section 6.4.2) from ssrc with one
// report block whose extended highest sequence number is seq: the receiver tells the packets
// apart by it.
func rtcpReceiverReport(ssrc uint32, seq int) []byte {
	b := make([]byte, 32)
	b[0] = 0x81                          // V=2, P=0, RC=1
	b[1] = 201                           // RR
	binary.BigEndian.PutUint16(b[2:], 7) // length in 32-bit words minus one
	binary.BigEndian.PutUint32(b[4:], ssrc)
	binary.BigEndian.PutUint32(b[8:], 0x5ca1ab1e) // the source reported on
	binary.BigEndian.PutUint32(b[16:], uint32(seq))
	return b
}

// isRTCP reports whether a UDP payload looks like RTCP (version 2, payload type 200-207).
func isRTCP(b []byte) bool {
	return len(b) >= 8 && b[0]>>6 == 2 && b[1] >= 200 && b[1] <= 207
}

// relayRTCP sends n RTCP receiver reports from one peer to dst, 20 ms apart, and returns the
// copies that reached to (from any source) within a second of the last, byte for byte, and
// the source they came from.
func relayRTCP(t *testing.T, from *udpPeer, dst netip.AddrPort, to *udpPeer, n int) (int, netip.AddrPort) {
	t.Helper()
	type result struct {
		count int
		src   netip.AddrPort
	}
	got := make(chan result, 1)
	want := make(map[string]bool)
	for i := range n {
		want[string(rtcpReceiverReport(0xc0ffee, i))] = true
	}
	go func() {
		var r result
		buf := make([]byte, 2048)
		_ = to.conn.SetReadDeadline(time.Now().Add(time.Duration(n)*20*time.Millisecond + time.Second))
		for {
			m, src, err := to.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Errorf("read RTCP at %v: %v", to.addr, err)
				}
				got <- r
				return
			}
			if isRTCP(buf[:m]) && want[string(buf[:m])] {
				delete(want, string(buf[:m]))
				r.count++
				r.src = src
				if r.count == n {
					got <- r
					return
				}
			}
		}
	}()
	for i := range n {
		from.send(t, dst, rtcpReceiverReport(0xc0ffee, i))
		time.Sleep(20 * time.Millisecond) // the pace of real RTCP is slower still; not a synchronisation
	}
	r := <-got
	return r.count, r.src
}

// poll is [eventually] that reports instead of failing: whether cond held within timeout, and
// what it said last. For checks after which the test goes on.
func poll(timeout time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok || time.Now().After(deadline) {
			return ok, state
		}
		time.Sleep(100 * time.Millisecond)
	}
}
