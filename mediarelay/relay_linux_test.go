package mediarelay

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// pairSpec is a stream between the phone (inside, leg A) and remote (outside, leg B): relay
// ports 20000/20001 facing the phone, 20002/20003 facing remote.
func pairSpec(f ipFamily) StreamSpec {
	return StreamSpec{
		CallID: "call-1@phone",
		A:      LegSpec{RTP: f.at(f.sipcarIn, 20000), RTCP: f.at(f.sipcarIn, 20001), Peer: f.at(f.phone, 30000)},
		B:      LegSpec{RTP: f.at(f.sipcarOut, 20002), RTCP: f.at(f.sipcarOut, 20003), Peer: f.at(f.remote, 40000)},
	}
}

func forEachMode(t *testing.T, fn func(t *testing.T, m relayMode, f ipFamily)) {
	for _, m := range relayModes {
		for _, f := range families {
			t.Run(m.name+"/"+f.name, func(t *testing.T) { fn(t, m, f) })
		}
	}
}

func TestForwardRTPAndRTCPBothWays(t *testing.T) {
	forEachMode(t, func(t *testing.T, m relayMode, f ipFamily) {
		l := newLab(t)
		r := l.startRelay(t, m, Config{})
		spec := pairSpec(f)
		phone, phoneRTCP := l.listen(t, l.phone, spec.A.Peer.String()), l.listen(t, l.phone, f.at(f.phone, 30001).String())
		remote, remoteRTCP := l.listen(t, l.remote, spec.B.Peer.String()), l.listen(t, l.remote, f.at(f.remote, 40001).String())
		s := addStream(t, r, spec)

		for i := range 3 {
			out := rtpPacket(uint16(100+i), uint32(160*i), 0xa, byte(i))
			phone.send(spec.A.RTP, out)
			remote.expect(out, spec.B.RTP)
			back := rtpPacket(uint16(700+i), uint32(160*i), 0xb, byte(i))
			remote.send(spec.B.RTP, back)
			phone.expect(back, spec.A.RTP)
		}
		rr := rtcpPacket(0xa, 1)
		phoneRTCP.send(spec.A.RTCP, rr)
		remoteRTCP.expect(rr, spec.B.RTCP)
		rr = rtcpPacket(0xb, 2)
		remoteRTCP.send(spec.B.RTCP, rr)
		phoneRTCP.expect(rr, spec.A.RTCP)

		st := s.Stats()
		if st.A.RTP.Packets != 3 || st.B.RTP.Packets != 3 || st.A.RTCP.Packets != 1 || st.B.RTCP.Packets != 1 {
			t.Errorf("received counts A rtp %d rtcp %d, B rtp %d rtcp %d; want 3 1 3 1",
				st.A.RTP.Packets, st.A.RTCP.Packets, st.B.RTP.Packets, st.B.RTCP.Packets)
		}
		if st.A.Sent.Packets != 4 || st.B.Sent.Packets != 4 || st.A.SentRTCP.Packets != 1 || st.B.SentRTCP.Packets != 1 {
			t.Errorf("sent A %d (rtcp %d) B %d (rtcp %d), want 4 (1) each",
				st.A.Sent.Packets, st.A.SentRTCP.Packets, st.B.Sent.Packets, st.B.SentRTCP.Packets)
		}
		if st.A.Peer != spec.A.Peer || st.B.Peer != spec.B.Peer || !st.A.Final || !st.B.Final {
			t.Errorf("latched A %v (final %v) B %v (final %v), want the SDP addresses, final", st.A.Peer, st.A.Final, st.B.Peer, st.B.Final)
		}
		if got := r.Counters().Forwarded; got != 8 {
			t.Errorf("Counters().Forwarded = %d, want 8", got)
		}
	})
}

// lockedBuffer collects log output from the relay's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// withoutNetAdmin runs fn with CAP_NET_ADMIN and CAP_NET_RAW out of the calling thread's
// effective set (capabilities are per thread), as in a container that was not granted them.
func withoutNetAdmin(t *testing.T, fn func()) {
	t.Helper()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	saved := data
	data[0].Effective &^= 1<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Capset(&hdr, &saved[0]); err != nil {
			t.Fatal(err) // the thread stays locked (in runs fn on a locked thread) and exits
		}
	}()
	fn()
}

func TestAutoModeFallsBackWithoutNetAdmin(t *testing.T) {
	l := newLab(t)
	logs := &lockedBuffer{}
	cfg := Config{PortMin: 20000, PortMax: 20999, Workers: 1, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	var r *Relay
	var err error
	in(t, l.sipcar, func() { withoutNetAdmin(t, func() { r, err = New(cfg) }) })
	if err != nil {
		t.Fatalf("New without CAP_NET_ADMIN: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if r.FanIn() {
		t.Fatal("FanIn() = true without CAP_NET_ADMIN")
	}
	if n := strings.Count(logs.String(), "falling back to a socket per relay port"); n != 1 {
		t.Errorf("the fallback was logged %d times, want once:\n%s", n, logs)
	}
	if tables := nftList(t, l); strings.Contains(tables, "sipcar") {
		t.Errorf("a fallback relay installed nftables rules:\n%s", tables)
	}
	// Same semantics: the stream flows.
	spec := pairSpec(families[0])
	phone := l.listen(t, l.phone, spec.A.Peer.String())
	remote := l.listen(t, l.remote, spec.B.Peer.String())
	addStream(t, r, spec)
	p := rtpPacket(1, 0, 0xa, 1)
	phone.send(spec.A.RTP, p)
	remote.expect(p, spec.B.RTP)
}
