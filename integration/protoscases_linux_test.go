package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// The cases of TestPROTOS: the OUSPG PROTOS c07-sip test material (when SIPCAR_PROTOS_DIR names
// a directory of its files) or a suite generated after its design (protosgen_linux_test.go).
// Either way a case is two PDUs with PROTOS's placeholders: an INVITE with an anomaly in one
// field and the teardown (a CANCEL) that ends it.

// protosDirEnv names a directory of PROTOS c07-sip case files (0000000 to 0004526, as rtckit
// once committed them): TestPROTOS then runs all of them instead of the generated suite.
const protosDirEnv = "SIPCAR_PROTOS_DIR"

// protosCase is one test case: its number, its group and its two PDUs with placeholders.
type protosCase struct {
	num      int
	group    string
	invite   []byte
	teardown []byte
}

// protosGroup is a group of PROTOS c07-sip: the cases that put anomalies into one field. Count
// is the group's size in PROTOS; the generated suite's groups have the sizes of their anomaly
// lists.
type protosGroup struct {
	name  string
	count int
}

// protosGroups are PROTOS c07-sip's test groups in the order of their case numbers.
var protosGroups = []protosGroup{
	{"valid", 1}, {"sip-method", 193}, {"sip-request-uri", 61}, {"sip-version", 75},
	{"sip-via-host", 106}, {"sip-via-hostcolon", 16}, {"sip-via-hostport", 46}, {"sip-via-version", 75},
	{"sip-via-tag", 57}, {"sip-from-displayname", 193}, {"sip-from-tag", 57}, {"sip-from-colon", 16},
	{"sip-from-uri", 61}, {"sip-contact-displayname", 193}, {"sip-contact-uri", 61},
	{"sip-contact-left-paranthesis", 16}, {"sip-contact-right-paranthesis", 16}, {"sip-to", 193},
	{"sip-to-left-paranthesis", 16}, {"sip-to-right-paranthesis", 16}, {"sip-call-id-value", 193},
	{"sip-call-id-at", 16}, {"sip-call-id-ip", 106}, {"sip-expires", 46}, {"sip-max-forwards", 46},
	{"sip-cseq-integer", 46}, {"sip-cseq-string", 193}, {"sip-content-type", 247},
	{"sip-content-length", 46}, {"sip-request-crlf", 10}, {"crlf-request", 10}, {"sdp-attribute-crlf", 10},
	{"sdp-proto-v-identifier", 193}, {"sdp-proto-v-equal", 16}, {"sdp-proto-v-integer", 46},
	{"sdp-origin-username", 193}, {"sdp-origin-sessionid", 46}, {"sdp-origin-networktype", 193},
	{"sdp-origin-ip", 106}, {"sdp-session", 193}, {"sdp-connection-networktype", 188},
	{"sdp-connection-ip", 106}, {"sdp-time-start", 46}, {"sdp-time-stop", 1}, {"sdp-media-media", 193},
	{"sdp-media-port", 46}, {"sdp-media-transport", 118}, {"sdp-media-type", 46},
	{"sdp-attribute-rtpmap", 118}, {"sdp-attribute-colon", 16}, {"sdp-attribute-payloadtype", 46},
	{"sdp-attribute-encodingname", 118}, {"sdp-attribute-slash", 16}, {"sdp-attribute-clockrate", 46},
}

// protosGroupOf names the PROTOS group of a case number.
func protosGroupOf(num int) string {
	first := 0
	for _, g := range protosGroups {
		if num < first+g.count {
			return g.name
		}
		first += g.count
	}
	return "beyond-the-groups"
}

// loadProtosDir reads every PROTOS case file in dir. A file is `<len> <INVITE PDU><len>
// <teardown PDU>`, each length the PDU's size in bytes with its placeholders.
func loadProtosDir(dir string) ([]protosCase, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var cases []protosCase
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		num, err := strconv.Atoi(e.Name())
		if err != nil {
			return nil, fmt.Errorf("%s: not a PROTOS case file (its name is no case number)", e.Name())
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		invite, rest, err := protosPDU(b)
		if err != nil {
			return nil, fmt.Errorf("%s: INVITE PDU: %w", e.Name(), err)
		}
		teardown, _, err := protosPDU(rest)
		if err != nil {
			return nil, fmt.Errorf("%s: teardown PDU: %w", e.Name(), err)
		}
		cases = append(cases, protosCase{num: num, group: protosGroupOf(num), invite: invite, teardown: teardown})
	}
	if len(cases) == 0 {
		return nil, fmt.Errorf("no PROTOS case files in %s", dir)
	}
	sort.Slice(cases, func(i, j int) bool { return cases[i].num < cases[j].num })
	return cases, nil
}

// protosPDU splits `<len> <PDU>` off the front of b.
func protosPDU(b []byte) (pdu, rest []byte, err error) {
	sp := bytes.IndexByte(b, ' ')
	if sp <= 0 || sp > 10 {
		return nil, nil, fmt.Errorf("no length at %q", b[:min(len(b), 16)])
	}
	n, err := strconv.Atoi(string(b[:sp]))
	if err != nil || n < 0 || sp+1+n > len(b) {
		return nil, nil, fmt.Errorf("length %q: want the size of the PDU that follows (%d bytes left)", b[:sp], len(b)-sp-1)
	}
	return b[sp+1 : sp+1+n], b[sp+1+n:], nil
}

// protosFill is what the placeholders of a case stand for when it is sent.
type protosFill struct {
	transport string // "udp" or "tcp"
	token     string // unique per case and transport: in the Call-ID and the Via branch
	local     string // the phone's address
	port      int    // the phone's port: its UDP socket, or its TCP connection's
}

// maxUDPPayload is the most a UDP datagram over IPv4 carries.
const maxUDPPayload = 65507

// pdus fills a case's placeholders as rtckit's ProtosTest did (Content-Length counted after the
// first blank line, or from the fourth byte when there is none) and returns the INVITE and the
// CANCEL. Over TCP the Via says TCP, as a phone writes it.
func (c protosCase) pdus(f protosFill) (invite, cancel []byte) {
	r := strings.NewReplacer(
		"<To>", "pbx@198.51.100.1",
		"<From-Address>", f.local,
		"<Local-Port>", strconv.Itoa(f.port),
		"<Branch-ID>", f.token,
		"<From>", "phone@"+f.local,
		"<Call-ID>", f.token,
		"<CSeq>", "1",
		"<From-IP>", f.local,
		"<Teardown-Method>", "CANCEL",
	)
	fill := func(pdu []byte) []byte {
		s := string(pdu)
		if f.transport == "tcp" {
			s = strings.ReplaceAll(s, "Via: SIP/2.0/UDP ", "Via: SIP/2.0/TCP ")
		}
		s = r.Replace(s)
		if strings.Contains(s, "<Content-Length>") {
			body := 4
			if i := strings.Index(s, "\r\n\r\n"); i >= 0 {
				body = i + 4
			}
			s = strings.ReplaceAll(s, "<Content-Length>", strconv.Itoa(len(s)-body))
		}
		return []byte(s)
	}
	return fill(c.invite), fill(c.teardown)
}
