package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestALGComparisonSidecar is the comparison's second scenario, the sidecar case: a PBX
// (kamailio) on the inside LAN behind a gateway, a phone on the internet that registers with it
// through the gateway's public address, then a call from the inside (a sipp caller on the PBX's
// host, through kamailio) to the registered phone, which answers and echoes the caller's media.
// The gateway is either sipcar in upstream mode or the usual port forward: DNAT of UDP 5060 on
// the public interface to kamailio, the kernel's SIP ALG (nf_conntrack_sip, nf_nat_sip)
// assigned to that SIP, masquerade of what leaves for the internet.
//
// For each it records: the registration (kamailio's 200 reached the phone), the call set up
// (the phone's 200 crossed to kamailio and the ACK reached the phone), RTP at the phone and
// back at the caller (counted on the gateway's public and inside interfaces), and which fields
// carried an inside address to the public side. It prints the comparison as a table. sipcar's
// row is asserted; the kernel's is the reference, reported only.
func TestALGComparisonSidecar(t *testing.T) {
	t.Parallel()
	const call = "sidecar: phone outside registers, PBX calls it, UDP"
	gateways := []string{"sipcar", "kernel"}
	rows := make([]sidecarRow, len(gateways))
	t.Run("calls", func(t *testing.T) {
		for i, g := range gateways {
			row := &rows[i]
			row.gateway, row.call = g, call
			t.Run(g, func(t *testing.T) {
				t.Parallel()
				runALGSidecar(t, g, row)
				row.done = true
				t.Logf("%s, %s: registered %v, %s", g, call, row.registered, &row.algRow)
				if g == "sipcar" {
					row.assert(t)
				}
			})
		}
	})
	t.Logf("SIP ALG comparison, sidecar (sipcar upstream vs a port forward with the kernel's nf_nat_sip):\n%s", sidecarTable(rows))
}

// sidecarRow is what the sidecar call through one gateway showed; toServer counts the RTP back
// at the caller.
type sidecarRow struct {
	algRow
	registered bool
}

// assert fails the test unless the phone registered and the call passed [algRow.assert].
func (r *sidecarRow) assert(t *testing.T) {
	t.Helper()
	if !r.registered {
		t.Errorf("%s, %s: the phone did not get kamailio's 200 to its REGISTER", r.gateway, r.call)
	}
	r.algRow.assert(t)
}

// sidecarTable writes the rows as algTable does, with a column for the registration.
func sidecarTable(rows []sidecarRow) string {
	calls := make([]algRow, len(rows))
	for i := range rows {
		calls[i] = rows[i].algRow
	}
	return algTable(calls, "RTP at phone / back at caller",
		algColumn{"registered", func(i int) string { return yesNo(rows[i].registered) }})
}

// runALGSidecar runs the registration and the call through one gateway of the upstream
// topology (car is the gateway, kamailio runs on pbx at 198.18.0.10:5060) and fills row.
func runALGSidecar(t *testing.T, gateway string, row *sidecarRow) {
	l := newUpstreamLab(newTestbed(t))
	// The PBX's gateway is the car, as on a LAN. With sipcar the car does not forward: the
	// phone is reachable from the inside only through sipcar.
	if err := ipCmd("-n", l.pbx.name, "route", "add", "default", "via", plan4.inside.String()); err != nil {
		t.Fatal(err)
	}
	wan := l.capture(l.car, "out0", netip.AddrPortFrom(phoneAddr, 9))
	lan := l.capture(l.car, "in0", netip.AddrPortFrom(pbxAddr, 9))
	l.startKamailio(l.pbx)
	switch gateway {
	case "sipcar":
		l.startSipcar(l.car, l.sipcarEnv("udp")...)
	case "kernel":
		l.portForwardALG()
	default:
		t.Fatalf("unknown gateway %q", gateway)
	}

	phoneSIP := netip.AddrPortFrom(phoneAddr, 5060)
	reg := l.sipp(l.phone, "register", sippOpts{scenario: "register.xml", local: phoneAddr.String(),
		remote: netip.AddrPortFrom(publicAddr, 5060).String(), service: "alice", extra: []string{"-recv_timeout", "8000"}})
	if _, err := reg.wait(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	row.notes = append(row.notes, "sipp register: "+sippOutcome(reg))

	phone := l.sipp(l.phone, "phone", sippOpts{scenario: "uas_media.xml", local: phoneAddr.String(), echo: true,
		extra: []string{"-recv_timeout", "8000"}})
	l.waitListening(l.phone, "udp", 5060)
	caller := l.sipp(l.pbx, "caller", sippOpts{scenario: "uac_media.xml", local: pbxAddr.String(), port: 5070,
		media: 6100, remote: netip.AddrPortFrom(pbxAddr, 5060).String(), service: "alice", pauseMS: 3000, rtpPcap: true,
		extra: []string{"-recv_timeout", "8000"}})
	if _, err := caller.wait(40 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := phone.wait(10 * time.Second); err != nil {
		phone.stop(syscall.SIGTERM)
	}
	row.notes = append(row.notes, "sipp caller: "+sippOutcome(caller), "sipp phone: "+sippOutcome(phone))

	wanPkts, lanPkts := wan.stop(t), lan.stop(t)
	var public [][]byte
	var invite []byte
	ackAtPhone := false
	for _, w := range wireMessages(wanPkts) {
		public = append(public, w.raw)
		switch {
		case w.status() == 200 && w.cseqMethod() == "REGISTER" && w.dst == phoneSIP:
			row.registered = true
		case strings.HasPrefix(string(w.raw), "ACK ") && w.dst == phoneSIP:
			ackAtPhone = true
		case strings.HasPrefix(string(w.raw), "INVITE ") && w.dst == phoneSIP && invite == nil:
			invite = w.raw
		}
	}
	okAtPBX := false
	for _, w := range wireMessages(lanPkts) {
		if w.status() == 200 && w.cseqMethod() == "INVITE" && w.dst == netip.AddrPortFrom(pbxAddr, 5060) {
			okAtPBX = true
		}
	}
	row.setUp = okAtPBX && ackAtPhone
	row.sent = 100 // rtp.pcap
	row.toPhone = rtpToAddr(wanPkts, phoneAddr)
	row.toServer = rtpToAddr(lanPkts, pbxAddr)
	row.recordLeaks(public)
	row.recordIPLeaks(wanPkts)
	if invite == nil {
		row.notes = append(row.notes, "no INVITE reached the phone")
		return
	}
	if m, err := parseSIP(invite); err == nil {
		if a, err := m.media(); err == nil {
			row.notes = append(row.notes, fmt.Sprintf("the phone was offered media at %v", a))
		}
	}
}

// portForwardALG makes the car the usual NAT gateway of a PBX: SIP over UDP to its public
// address forwarded (DNAT) to kamailio, the kernel's SIP helper assigned to new SIP flows (the
// forwarded ones and the PBX's own), masquerade of what leaves for the internet, forwarding on.
func (l *upstreamLab) portForwardALG() {
	l.t.Helper()
	if err := l.car.sysctl("net.ipv4.ip_forward=1"); err != nil {
		l.t.Fatal(err)
	}
	l.nft(l.car, fmt.Sprintf(`table inet sctalgfw {
	ct helper sipudp {
		type "sip" protocol udp;
		l3proto ip;
	}
	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "out0" udp dport 5060 dnat ip to %v
	}
	chain pre {
		type filter hook prerouting priority filter; policy accept;
		ct state new udp dport 5060 ct helper set "sipudp"
	}
	chain srcnat {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "out0" masquerade
	}
}
`, netip.AddrPortFrom(pbxAddr, 5060)))
}

// sippOutcome says how a finished sipp run ended, from its exit status and statistics.
func sippOutcome(s *sippProc) string {
	if !s.exited() {
		return "still running"
	}
	code, err := s.wait(time.Second)
	if err != nil {
		return err.Error()
	}
	st, err := s.stats()
	if err != nil {
		return fmt.Sprintf("exit %d, no statistics", code)
	}
	if code == 0 && st.successful > 0 && st.failed == 0 {
		return "succeeded"
	}
	return fmt.Sprintf("failed (exit %d)", code)
}

// rtpToAddr counts the RTP packets of a capture addressed to any port of dst.
func rtpToAddr(pkts []packet, dst netip.Addr) int {
	n := 0
	for _, p := range pkts {
		if p.proto == "udp" && p.dst.Addr() == dst && isRTP(p.payload) {
			n++
		}
	}
	return n
}
