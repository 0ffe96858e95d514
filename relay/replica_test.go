package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/pinhole"
)

// memReplica records the names the relay says changed.
type memReplica struct {
	mu    sync.Mutex
	names map[string]int
}

func (m *memReplica) Changed(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.names == nil {
		m.names = map[string]int{}
	}
	m.names[key]++
}

func (m *memReplica) count(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.names[key]
}

// runRelay starts a relay of cfg and returns a function that stops it (also at cleanup).
func runRelay(t *testing.T, r *Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	for !r.Ready() {
		time.Sleep(5 * time.Millisecond)
	}
	return stop
}

// A standby relay restores the active one's records after it stopped: the call's media flows
// on at once on the same ports, to the peer the active had latched (not the SDP address), an
// incoming call reaches the phone registered before through its binding, and the call's BYE
// ends it and its record.
func TestRestoreTakesOverCalls(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	pbx, phone := listenRTP(t, "127.0.0.2"), listenRTP(t, "127.0.0.3")
	sipAddr := netip.AddrPortFrom(lo, freeUDPPort(t))
	cfg := Config{
		Mode: Upstream, Upstream: addrOf(pbx), InsideNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
		ListenUDP: sipAddr,
		Map: pinhole.Config{Inside: pinhole.Addrs{IPv4: lo}, Public: pinhole.Addrs{IPv4: lo},
			MediaPorts: pinhole.PortRange{First: 33000, Last: 33999}, SignalingPorts: pinhole.PortRange{First: 34000, Last: 34999}},
		Media: mediarelay.Config{Mode: mediarelay.ModeFallback},
	}
	b := &loopbed{t: t, pbx: pbx, phone: phone, sip: sipAddr}
	repA := &memReplica{}
	cfgA := cfg
	cfgA.Replica = repA
	ra, err := New(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	b.r = ra
	stopA := runRelay(t, ra)

	// The phone registers; the PBX keeps the Contact sipcar gave it.
	b.send(phone, sipAddr, fmt.Sprintf("REGISTER sip:127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKreg\n"+
		"From: <sip:200@127.0.0.1>;tag=r\nTo: <sip:200@127.0.0.1>\nCall-ID: reg\nCSeq: 1 REGISTER\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\nExpires: 3600\nContent-Length: 0\n\n", sipAddr.Port(), addrOf(phone), addrOf(phone)))
	m, src := b.recv(pbx)
	reg := m.(*sip.Request)
	contact := reg.Contact().Address
	b.send(pbx, src, fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=r\nTo: <sip:200@127.0.0.1>;tag=reg\n"+
		"Call-ID: reg\nCSeq: 1 REGISTER\nContact: <%s>;expires=3600\nContent-Length: 0\n\n", reg.Via().Value(), contact.String()))
	b.recv(phone)

	// A call whose phone sends media from another port than its SDP says (a NAT).
	phoneSDP := listenRTP(t, "127.0.0.3") // never read: what the SDP names
	phoneRTP, pbxRTP := listenRTP(t, "127.0.0.3"), listenRTP(t, "127.0.0.2")
	b.send(phone, sipAddr, withBody(fmt.Sprintf("INVITE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK1\n"+
		"From: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>\nCall-ID: call1\nCSeq: 1 INVITE\nMax-Forwards: 70\n"+
		"Contact: <sip:200@%s>\n", sipAddr.Port(), addrOf(phone), addrOf(phone)), sdp("127.0.0.3", int(addrOf(phoneSDP).Port()))))
	m, src = b.recv(pbx)
	inv := m.(*sip.Request)
	pbxSide := sdpAddr(t, string(inv.Body()))
	b.send(pbx, src, withBody(fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: call1\nCSeq: 1 INVITE\nContact: <sip:100@%s>\n", inv.Via().Value(), addrOf(pbx)), sdp("127.0.0.2", int(addrOf(pbxRTP).Port()))))
	m, _ = b.recv(phone)
	ok := m.(*sip.Response)
	phoneSide := sdpAddr(t, string(ok.Body()))
	send := func(from *net.UDPConn, to netip.AddrPort, seq byte) []byte {
		pkt := append([]byte{0x80, 0, 0, seq, 0, 0, 0, 1, 0, 0, 0, 7}, bytes.Repeat([]byte{seq}, 160)...)
		if _, err := from.WriteToUDPAddrPort(pkt, to); err != nil {
			t.Fatal(err)
		}
		return pkt
	}
	expect := func(c *net.UDPConn, want []byte, what string) {
		t.Helper()
		buf := make([]byte, 2048)
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if bytes.Equal(buf[:n], want) {
				return
			}
		}
	}
	expect(pbxRTP, send(phoneRTP, phoneSide, 1), "phone's media before the failover")
	expect(phoneRTP, send(pbxRTP, pbxSide, 2), "PBX's media before the failover")
	// The latch reaches the server map within a sweep of the media relay.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if bnd := ra.m.LookupMedia(phoneSide.Port()); bnd != nil {
			if p, ok := bnd.Peer(); ok && p == addrOf(phoneRTP) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the phone's leg never showed its latched peer")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if repA.count("call:call1") == 0 || repA.count(sigRecordPrefix+contact.Host+":"+fmt.Sprint(contact.Port)) == 0 {
		t.Errorf("replicator told of %v; want the call and the registered binding %s:%d", repA.names, contact.Host, contact.Port)
	}

	records := map[string][]byte{}
	for _, k := range ra.Keys() {
		if v, ok := ra.Record(k); ok {
			records[k] = v
		}
	}
	var rec replicaCallRecord
	if err := json.Unmarshal(records["call:call1"], &rec); err != nil || rec.Map == nil || rec.State == nil || !rec.State.Established {
		t.Fatalf("call record %s (%v)", records["call:call1"], err)
	}
	stopA() // the active dies; its ports are free

	cfgB := cfg
	repB := &memReplica{}
	cfgB.Replica = repB
	rb, err := New(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	report := rb.Restore(records)
	if report.Calls != 1 || report.Streams != 1 || report.Signaling < 1 || len(report.Failed) != 0 {
		t.Fatalf("Restore: %+v", report)
	}
	// The phone's binding keeps the Contact it wrote in its REGISTER: the standby gives it back
	// in the registrar's answers as the active did.
	regBinding := netip.MustParseAddrPort(fmt.Sprintf("%s:%d", contact.Host, contact.Port))
	if w, ok := rb.nat.contact(regBinding); !ok || w != addrOf(phone).String() {
		t.Errorf("restored binding %v: REGISTER Contact %q (%v); want %q", regBinding, w, ok, addrOf(phone))
	}
	b.r = rb
	runRelay(t, rb)

	// Media toward the phone goes to where the phone's media came from, before the phone sends.
	expect(phoneRTP, send(pbxRTP, pbxSide, 3), "PBX's media after the failover (to the latched peer)")
	expect(pbxRTP, send(phoneRTP, phoneSide, 4), "phone's media after the failover")

	// An incoming call to the phone registered before the failover.
	target := netip.MustParseAddrPort(fmt.Sprintf("%s:%d", contact.Host, contact.Port))
	b.send(pbx, target, fmt.Sprintf("OPTIONS sip:200@%s SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bKin\n"+
		"From: <sip:100@127.0.0.2>;tag=in\nTo: <sip:200@127.0.0.1>\nCall-ID: incoming\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
		target, addrOf(pbx)))
	if m, _ := b.recv(phone); m.(*sip.Request).CallID().Value() != "incoming" {
		t.Fatal("the registered phone did not get the request")
	}

	// The call's own BYE ends it: the PBX's 200 reaches the phone, the record goes.
	b.send(phone, sipAddr, fmt.Sprintf("BYE sip:100@127.0.0.1:%d SIP/2.0\nVia: SIP/2.0/UDP %s;branch=z9hG4bK2\nFrom: <sip:200@127.0.0.1>;tag=p1\n"+
		"To: <sip:100@127.0.0.1>;tag=x1\nCall-ID: call1\nCSeq: 2 BYE\nMax-Forwards: 70\nContent-Length: 0\n\n", sipAddr.Port(), addrOf(phone)))
	for {
		m, src = b.recv(pbx)
		if r, ok := m.(*sip.Request); ok && r.Method == sip.BYE {
			break
		}
	}
	b.send(pbx, src, fmt.Sprintf("SIP/2.0 200 OK\nVia: %s\nFrom: <sip:200@127.0.0.1>;tag=p1\nTo: <sip:100@127.0.0.1>;tag=x1\n"+
		"Call-ID: call1\nCSeq: 2 BYE\nContent-Length: 0\n\n", m.(*sip.Request).Via().Value()))
	for {
		m, _ := b.recv(phone)
		if r, ok := m.(*sip.Response); ok && r.CallID().Value() == "call1" {
			if r.StatusCode != 200 {
				t.Fatalf("BYE answered %d", r.StatusCode)
			}
			break
		}
	}
	if _, ok := rb.Record("call:call1"); ok || repB.count("call:call1") == 0 {
		t.Errorf("after BYE: record still there %v, replicator told %d times", ok, repB.count("call:call1"))
	}
	if n := media(rb); n != 0 {
		t.Errorf("%d media bindings after BYE", n)
	}
	for k := range records {
		if strings.HasPrefix(k, "sig:") {
			if _, ok := rb.Record(k); !ok {
				t.Errorf("sip binding %s gone after the call", k)
			}
		}
	}
}
