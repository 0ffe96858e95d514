package integration

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHEPExport runs calls through sipcar with SIPCAR_HEP_ADDR pointing at a real HEP collector,
// Kamailio's sipcapture module, in a namespace of its own, over UDP and over TCP. The collector
// logs every HEP packet it receives with its chunks. The test reads back, for each call, the
// INVITE as sipcar received it (the phone's addresses) and as it sent it (its inside addresses,
// the SDP rewritten) under the call's Call-ID as correlation id; the rewrite audit of the traced
// calls (SIPCAR_TRACE by Call-ID and by source) as HEP log records, and none for the untraced
// call. sipcar's own log, at info level, shows each message of a traced call before and after
// rewriting with its changes, and nothing of the untraced call.
// The first call's phone sends an RTCP sender report, which reaches the collector as an RTCP
// record (HEP proto 5, JSON) of its call; each call's end gives a quality report (HEP proto 34)
// of each leg that carried media, the phone's and the PBX's, with what sipcar counted.
func TestHEPExport(t *testing.T) {
	for _, c := range []struct{ name, addr string }{
		{"udp", "203.0.113.9:9060"},
		{"tcp", "tcp://203.0.113.9:9061"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			testHEPExport(t, c.addr)
		})
	}
}

// The collector's link: sipcar's namespace reaches it on a network of its own.
var (
	hepCarAddr       = netip.MustParseAddr("203.0.113.1")
	hepCollectorAddr = netip.MustParseAddr("203.0.113.9")
)

// The calls of the test: one traced by its Call-ID, one traced because its phone's address is
// selected, one not traced.
const (
	hepTracedCall = "hep-traced"
	hepSourceCall = "hep-by-source"
	hepPlainCall  = "hep-untraced"
	hepAgentID    = 2077
	hepPassword   = "capture-secret"
)

func testHEPExport(t *testing.T, hepAddr string) {
	l := newUpstreamLab(newTestbed(t))
	l.addPhoneAddr(otherPhoneAddr)
	collector := l.startHEPCollector()
	pbx := l.uas(l.pbx, "pbx", uasScenario{answer: pcmaAnswer}, sippOpts{local: pbxAddr.String(), echo: true, calls: 3})
	l.waitListening(l.pbx, "udp", 5060)
	car := l.startSipcar(l.car, l.sipcarEnv("udp",
		"SIPCAR_HEP_ADDR="+hepAddr, fmt.Sprintf("SIPCAR_HEP_ID=%d", hepAgentID), "SIPCAR_HEP_PASSWORD="+hepPassword,
		"SIPCAR_TRACE=callid:"+hepTracedCall+"|src:"+otherPhoneAddr.String()+"/32",
		"SIPCAR_LOG_LEVEL=info")...)

	calls := []struct {
		id    string
		phone netip.Addr
	}{{hepTracedCall, phoneAddr}, {hepPlainCall, phoneAddr}, {hepSourceCall, otherPhoneAddr}}
	for i, c := range calls {
		name := fmt.Sprintf("phone-%d", i+1)
		l.writeLongRTPPcap(name, rtpPackets)
		pause := 1000
		if i == 0 {
			pause = 5000 // time to send RTCP once the call is up
		}
		phone := l.uac(l.phone, name, uacScenario{callID: c.id, offer: pcmaOffer, play: true, pauseMS: pause},
			sippOpts{local: c.phone.String(), remote: publicAddr.String() + ":5060"})
		if i == 0 {
			l.sendHEPCallRTCP(t, collector, c.id, c.phone)
		}
		phone.succeeded(t, 60*time.Second, 1)
		car.waitNoMedia(t, c.id+"'s BYE")
	}
	pbx.succeeded(t, 10*time.Second, 3)

	// Every message of a call crosses sipcar twice: INVITE, 180, 200, ACK, BYE and its 200, each
	// as received and as sent. The traced calls have an audit record of each relayed message.
	var recs []hepRecord
	eventually(t, 20*time.Second, "every SIP message of the calls, twice, and the traced calls' audit at the collector", func() (bool, string) {
		recs = collector.records(t)
		for _, c := range calls {
			if n := countHEP(recs, c.id, 1); n < 12 {
				return false, fmt.Sprintf("%s: %d SIP records of 12; %d records in all", c.id, n, len(recs))
			}
		}
		for _, c := range calls {
			if n := countHEP(recs, c.id, 34); n < 2 {
				return false, fmt.Sprintf("%s: %d quality reports of 2", c.id, n)
			}
		}
		for _, id := range []string{hepTracedCall, hepSourceCall} {
			if n := countHEP(recs, id, 100); n < 6 {
				return false, fmt.Sprintf("%s: %d audit records of 6", id, n)
			}
		}
		return true, ""
	})

	for _, c := range calls {
		received, sent := inviteRecords(recs, c.id)
		switch {
		case len(received) == 0 || len(sent) == 0: // more than one: retransmissions
			t.Errorf("%s: %d INVITEs as received and %d as sent at the collector; want both", c.id, len(received), len(sent))
			continue
		case received[0].src != netip.AddrPortFrom(c.phone, 5060) || received[0].dst != netip.AddrPortFrom(publicAddr, 5060):
			t.Errorf("%s: the INVITE as received went %v -> %v; want the phone's %v:5060 -> %v:5060", c.id, received[0].src, received[0].dst, c.phone, publicAddr)
		case sent[0].src.Addr() != plan4.inside || sent[0].dst != netip.AddrPortFrom(pbxAddr, 5060):
			t.Errorf("%s: the INVITE as sent went %v -> %v; want sipcar's inside address -> the PBX %v:5060", c.id, sent[0].src, sent[0].dst, pbxAddr)
		case !strings.Contains(received[0].payload, "c=IN IP4 "+c.phone.String()) || !strings.Contains(sent[0].payload, "c=IN IP4 "+plan4.inside.String()):
			t.Errorf("%s: the two INVITEs do not show the SDP before and after rewriting:\n%s\n----\n%s", c.id, received[0].payload, sent[0].payload)
		}
	}
	checkHEPMedia(t, recs, calls[0].id, calls[0].phone)
	for _, c := range calls {
		checkHEPQuality(t, recs, c.id, c.phone)
	}
	for _, r := range recs {
		if r.agent != hepAgentID || r.auth != hepPassword {
			t.Errorf("a HEP record with agent ID %d and password %q; want %d and %q: %v", r.agent, r.auth, hepAgentID, hepPassword, r)
			break
		}
	}

	// The rewrite audit: the traced calls' in HEP (log records, JSON) and in sipcar's log at info
	// level; nothing of the untraced call.
	if n := countHEP(recs, hepPlainCall, 100); n != 0 {
		t.Errorf("%d audit records of the untraced call %s at the collector; want none", n, hepPlainCall)
	}
	for _, id := range []string{hepTracedCall, hepSourceCall} {
		checkHEPAudit(t, recs, id)
	}
	logged := auditLines(car.output())
	if n := len(logged[hepPlainCall]); n != 0 {
		t.Errorf("sipcar logged %d rewrite audits of the untraced call at info level; want none:\n%s", n, strings.Join(logged[hepPlainCall], "\n"))
	}
	for _, id := range []string{hepTracedCall, hepSourceCall} {
		checkAuditLog(t, logged[id], id)
	}

	ms := car.metrics(t)
	sentHEP, dropped, failed := sumMetric(ms, "sipcar_hep_packets_total", `result="sent"`),
		sumMetric(ms, "sipcar_hep_packets_total", `result="dropped"`), sumMetric(ms, "sipcar_hep_packets_total", `result="failed"`)
	t.Logf("HEP over %s: %d records at the collector; sipcar counted %.0f sent, %.0f dropped, %.0f failed", hepAddr, len(recs), sentHEP, dropped, failed)
	if dropped != 0 || failed != 0 || sentHEP < float64(len(recs)) {
		t.Errorf("sipcar_hep_packets_total: sent %.0f, dropped %.0f, failed %.0f; want none dropped or failed and at least the %d the collector got",
			sentHEP, dropped, failed, len(recs))
	}
}

// hepRecord is one HEP packet as the collector logged it.
type hepRecord struct {
	proto    int
	src, dst netip.AddrPort
	agent    int
	auth     string
	cid      string
	payload  string
}

func (r hepRecord) String() string {
	return fmt.Sprintf("proto %d %v -> %v agent %d cid %q: %.60q", r.proto, r.src, r.dst, r.agent, r.cid, r.payload)
}

// hepCollector is Kamailio with sipcapture: it receives HEP over UDP (9060) and TCP (9061) and
// logs each packet, chunk by chunk, on stderr.
type hepCollector struct {
	*proc
}

// startHEPCollector gives sipcar's namespace a link to a collector namespace and starts Kamailio
// there, listening for HEP.
func (l *upstreamLab) startHEPCollector() *hepCollector {
	l.t.Helper()
	bin := needProgram(l.t, "kamailio", "kamailio")
	ns := l.host("hep")
	l.link(end{l.car, "hep0", []string{hepCarAddr.String() + "/24"}}, end{ns, "eth0", []string{hepCollectorAddr.String() + "/24"}})
	dir := l.workdir("hepcollector")
	db := filepath.Join(dir, "db") // sipcapture binds a database even when nothing is stored
	if err := os.MkdirAll(db, 0o755); err != nil {
		l.t.Fatal(err)
	}
	cfg := filepath.Join(dir, "kamailio.cfg")
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(strings.ReplaceAll(hepCollectorCfg,
		"COLLECTOR", hepCollectorAddr.String()), "DBDIR", db)), 0o644); err != nil {
		l.t.Fatal(err)
	}
	p := l.start(ns, "kamailio", procOpts{dir: dir}, bin, "-f", cfg, "-DD", "-E", "-m", "32", "-M", "8",
		"-Y", dir, "-P", filepath.Join(dir, "kamailio.pid"), "-w", dir)
	l.waitListening(ns, "udp", 9060)
	l.waitListening(ns, "tcp", 9061)
	if p.exited() {
		l.t.Fatalf("kamailio exited at start:\n%s", firstLines(p.output(), 60))
	}
	return &hepCollector{proc: p}
}

// hepCollectorCfg is the collector's configuration: every HEP packet runs the sipcapture event
// route, which logs its chunks (the payload in base64) and stores nothing. TCP carries HEP only
// with tcp_accept_hep3, and HEP has no Content-Length (tcp_accept_no_cl).
const hepCollectorCfg = `#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
listen=udp:COLLECTOR:9060
listen=tcp:COLLECTOR:9061
tcp_accept_hep3=yes
tcp_accept_no_cl=yes
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "db_text.so"
loadmodule "sipcapture.so"
modparam("xlog", "buf_size", 65536)
modparam("sipcapture", "db_url", "text://DBDIR")
modparam("sipcapture", "hep_capture_on", 1)
modparam("sipcapture", "nonsip_hook", 1)
event_route[sipcapture:request] {
	xlog("L_ALERT", "HEPREC proto=$hep(0x00b) src=$hep(0x003):$hep(0x007) dst=$hep(0x004):$hep(0x008) agent=$hep(0x00c) auth=$hep(0x00e) cid=$hep(0x011) payload=$(hep(0x00f){s.encode.base64})\n");
	return 0;
}
request_route {
	drop;
}
`

var hepLine = regexp.MustCompile(`HEPREC proto=(\d+) src=(\S+) dst=(\S+) agent=(\d+) auth=(\S*) cid=(\S*) payload=(\S*)`)

// records returns what the collector has logged so far.
func (c *hepCollector) records(t testing.TB) []hepRecord {
	t.Helper()
	var out []hepRecord
	for _, m := range hepLine.FindAllStringSubmatch(c.output(), -1) {
		var r hepRecord
		r.proto, _ = strconv.Atoi(m[1])
		r.src, _ = netip.ParseAddrPort(m[2])
		r.dst, _ = netip.ParseAddrPort(m[3])
		r.agent, _ = strconv.Atoi(m[4])
		r.auth, r.cid = m[5], m[6]
		b, err := base64.StdEncoding.DecodeString(m[7])
		if err != nil {
			t.Fatalf("the collector logged a payload that is no base64: %v: %.80s", err, m[7])
		}
		r.payload = string(b)
		out = append(out, r)
	}
	return out
}

func countHEP(recs []hepRecord, cid string, proto int) int {
	n := 0
	for _, r := range recs {
		if r.cid == cid && r.proto == proto {
			n++
		}
	}
	return n
}

// inviteRecords returns a call's INVITE as sipcar received it (sent to its public address) and
// as sipcar sent it on (to the PBX).
func inviteRecords(recs []hepRecord, cid string) (received, sent []hepRecord) {
	for _, r := range recs {
		if r.proto != 1 || r.cid != cid || !strings.HasPrefix(r.payload, "INVITE ") {
			continue
		}
		switch r.dst.Addr() {
		case publicAddr:
			received = append(received, r)
		case pbxAddr:
			sent = append(sent, r)
		}
	}
	return received, sent
}

// hepAudit is the JSON of a rewrite audit record (HEP proto 100).
type hepAudit struct {
	CallID  string `json:"call_id"`
	Side    string `json:"from_side"`
	Changes []struct {
		Field, What, Old, New, Why string
	} `json:"changes"`
	Before string `json:"before"`
	After  string `json:"after"`
}

// checkHEPAudit checks a traced call's audit records: one for each relayed message (and its
// retransmissions), each with the message before and after; the INVITE's names the SDP change to
// sipcar's relay address and why.
func checkHEPAudit(t *testing.T, recs []hepRecord, cid string) {
	t.Helper()
	starts := map[string]int{}
	for _, r := range recs {
		if r.cid != cid || r.proto != 100 {
			continue
		}
		var a hepAudit
		if err := json.Unmarshal([]byte(r.payload), &a); err != nil {
			t.Errorf("%s: an audit record that is no JSON: %v: %.200s", cid, err, r.payload)
			continue
		}
		if a.CallID != cid || a.Before == "" || a.After == "" {
			t.Errorf("%s: audit record without its call, or the message before or after: %+v", cid, a)
			continue
		}
		starts[messageKey(a.Before)]++
		if strings.HasPrefix(a.Before, "INVITE ") {
			found := false
			for _, c := range a.Changes {
				if strings.Contains(c.Field+" "+c.What, "SDP c=") && c.New == plan4.inside.String() && c.Why != "" {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: the INVITE's audit names no SDP c= change to %v with a reason: %+v", cid, plan4.inside, a.Changes)
			}
		}
	}
	for _, want := range []string{"INVITE", "180", "200 INVITE", "ACK", "BYE", "200 BYE"} {
		if starts[want] == 0 {
			t.Errorf("%s: no audit record of %s at the collector (all: %v)", cid, want, starts)
		}
	}
}

var cseqLine = regexp.MustCompile(`(?mi)^CSeq:\s*\d+\s+(\S+)`)

// messageKey names a message: the method of a request, the status code of a response, with
// its CSeq method for a 200.
func messageKey(msg string) string {
	start, _, _ := strings.Cut(msg, "\r\n")
	f := strings.Fields(start)
	if len(f) < 2 {
		return start
	}
	if f[0] != "SIP/2.0" {
		return f[0]
	}
	if f[1] != "200" {
		return f[1]
	}
	if m := cseqLine.FindStringSubmatch(msg); m != nil {
		return "200 " + m[1]
	}
	return f[1]
}

var auditLine = regexp.MustCompile(`(?m)^time=\S+ level=(\S+) msg="rewrite audit" method=\S+ status=\d+ call=(\S+) .*$`)

// auditLines returns sipcar's "rewrite audit" log lines by call.
func auditLines(log string) map[string][]string {
	out := map[string][]string{}
	for _, m := range auditLine.FindAllStringSubmatch(log, -1) {
		out[m[2]] = append(out[m[2]], m[0])
	}
	return out
}

// checkAuditLog checks a traced call's audit in sipcar's log: at info level, a line for each
// relayed message (INVITE, 180, 200, ACK, BYE, 200, and retransmissions) with the message before
// and after and the list of changes.
func checkAuditLog(t *testing.T, lines []string, cid string) {
	t.Helper()
	if len(lines) < 6 {
		t.Errorf("sipcar logged %d rewrite audits of the traced call %s; want one for each of its 6 relayed messages:\n%s", len(lines), cid, strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		if !strings.Contains(l, "level=INFO ") || !strings.Contains(l, ` before="`) || !strings.Contains(l, ` after="`) || !strings.Contains(l, ` changes="[`) {
			t.Errorf("%s: an audit line without its level INFO, before, after or changes:\n%s", cid, l)
		}
	}
	invite := ""
	for _, l := range lines {
		if strings.Contains(l, `before="INVITE `) {
			invite = l
		}
	}
	for _, want := range []string{`SDP c= SDP address: \"` + phoneAddrOfCall(cid) + `\" -> \"198.18.0.1\"`, `media anchored at sipcar's relay address`,
		`SDP m= port: \"6000\" -> `, `Via host: \"` + phoneAddrOfCall(cid) + `\" -> \"198.18.0.1\"`} {
		if !strings.Contains(invite, want) {
			t.Errorf("%s: the INVITE's audit line does not say %s:\n%s", cid, want, invite)
		}
	}
}

func phoneAddrOfCall(cid string) string {
	if cid == hepSourceCall {
		return otherPhoneAddr.String()
	}
	return phoneAddr.String()
}

// hepRTCPSSRC is the SSRC of the sender report the first call's phone sends.
const hepRTCPSSRC = 0x5ca1ab1e

// sendHEPCallRTCP waits until the collector has the call's 200 to the phone, then sends a sender
// report from the phone's RTCP port (its SDP's RTP port + 1) to the relay's RTCP port (the 200's
// RTP port + 1), as the phone's RTP stack would.
func (l *upstreamLab) sendHEPCallRTCP(t *testing.T, collector *hepCollector, cid string, phone netip.Addr) {
	t.Helper()
	var offer, answer netip.AddrPort
	eventually(t, 20*time.Second, "the call's INVITE and 200 to the phone at the collector", func() (bool, string) {
		for _, r := range collector.records(t) {
			if r.proto != 1 || r.cid != cid {
				continue
			}
			switch {
			case strings.HasPrefix(r.payload, "INVITE ") && r.src.Addr() == phone:
				offer, _ = sdpMedia(r.payload)
			case strings.HasPrefix(r.payload, "SIP/2.0 200") && r.dst.Addr() == phone && strings.Contains(r.payload, "m=audio"):
				answer, _ = sdpMedia(r.payload)
			}
		}
		return offer.IsValid() && answer.IsValid(), fmt.Sprintf("offer %v answer %v", offer, answer)
	})
	conn, err := l.phone.listenUDP(netip.AddrPortFrom(phone, offer.Port()+1).String())
	if err != nil {
		t.Fatalf("the phone's RTCP port: %v", err)
	}
	defer conn.Close()
	// RFC 3550 6.4.1: a sender report (V=2, PT=200, length 6 words) with no report block.
	sr := make([]byte, 28)
	sr[0], sr[1], sr[3] = 0x80, 200, 6
	binary.BigEndian.PutUint32(sr[4:], hepRTCPSSRC)
	binary.BigEndian.PutUint64(sr[8:], 0xe8c0_0000_8000_0000)
	binary.BigEndian.PutUint32(sr[20:], 42) // packets sent
	binary.BigEndian.PutUint32(sr[24:], 42*160)
	if _, err := conn.WriteToUDPAddrPort(sr, netip.AddrPortFrom(answer.Addr(), answer.Port()+1)); err != nil {
		t.Fatalf("send RTCP: %v", err)
	}
}

// checkHEPMedia checks the RTCP record of the call whose phone sent a sender report: from the
// phone, as Homer's JSON, with the report's SSRC and counts, under the Call-ID.
func checkHEPMedia(t *testing.T, recs []hepRecord, cid string, phone netip.Addr) {
	t.Helper()
	found := 0
	for _, r := range recs {
		if r.cid != cid || r.proto != 5 {
			continue
		}
		var rep struct {
			Type   int    `json:"type"`
			SSRC   uint32 `json:"ssrc"`
			Sender struct {
				Packets uint32 `json:"packets"`
			} `json:"sender_information"`
		}
		if err := json.Unmarshal([]byte(r.payload), &rep); err != nil {
			t.Errorf("%s: an RTCP record that is no JSON: %v: %.200s", cid, err, r.payload)
			continue
		}
		if r.src.Addr() != phone || rep.Type != 200 || rep.SSRC != hepRTCPSSRC || rep.Sender.Packets != 42 {
			t.Errorf("%s: RTCP record %v -> %v: %s; want the phone's sender report", cid, r.src, r.dst, r.payload)
			continue
		}
		found++
	}
	if found != 1 {
		t.Errorf("%s: %d RTCP records of the phone's sender report at the collector; want 1", cid, found)
	}
}

// checkHEPQuality checks a call's quality reports: one per leg, from the phone and from the PBX
// (which echoes), each final, with the packets sipcar counted and a MOS.
func checkHEPQuality(t *testing.T, recs []hepRecord, cid string, phone netip.Addr) {
	t.Helper()
	from := map[netip.Addr]int{}
	for _, r := range recs {
		if r.cid != cid || r.proto != 34 {
			continue
		}
		var q struct {
			CallID string  `json:"RTP_SIP_CALL_ID"`
			Type   string  `json:"TYPE"`
			SrcIP  string  `json:"SRC_IP"`
			Total  uint64  `json:"TOTAL_PK"`
			MOS    float64 `json:"MOS"`
		}
		if err := json.Unmarshal([]byte(r.payload), &q); err != nil {
			t.Errorf("%s: a quality report that is no JSON: %v: %.200s", cid, err, r.payload)
			continue
		}
		src, _ := netip.ParseAddr(q.SrcIP)
		if q.CallID != cid || q.Type != "HANGUP" || q.Total < 10 || q.MOS < 1 || src != r.src.Addr() {
			t.Errorf("%s: quality report %s; want the call's final report with packets and a MOS", cid, r.payload)
			continue
		}
		from[src]++
	}
	if from[phone] != 1 || from[pbxAddr] != 1 {
		t.Errorf("%s: quality reports by peer %v; want one from the phone %v and one from the PBX %v", cid, from, phone, pbxAddr)
	}
}
