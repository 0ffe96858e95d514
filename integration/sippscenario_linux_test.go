package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Generated sipp scenarios, for calls whose SDP a test crafts (a codec the offer lacks, SRTP on
// one side, a wrong external address, a hold): the test states the media lines it sends, the
// rest is the plain call of uac_media.xml and uas_media.xml.

// uacScenario is a caller: an INVITE with SDP, then the call, or the refusal it expects.
type uacScenario struct {
	// callID is the Call-ID: sipp maps the responses it gets to its calls by their Call-ID, so it
	// is set on sipp's command line (see [uacScenario.args]), not in the scenario.
	callID string
	// contactPort is the port its Contact names; 0 for its own SIP port.
	contactPort int
	// offer is the SDP from the first m= line on, one line per entry (sipp's keywords allowed:
	// [auto_media_port], [media_ip]).
	offer []string
	// play plays rtp.pcap (from sipp's working directory) once the call is up.
	play bool
	// pauseMS is how long the call lasts (before the hold, when there is one).
	pauseMS int
	// hold, when set, is a re-INVITE's SDP from the first m= line on, sent after pauseMS;
	// holdPauseMS later comes the BYE.
	hold        []string
	holdPauseMS int
	// refused, when not 0, is the final response the INVITE gets: it is acknowledged and the
	// scenario ends.
	refused int
}

// uasScenario is a callee: it answers an INVITE with SDP, and a re-INVITE when there is one,
// then the BYE.
type uasScenario struct {
	// answer is the SDP from the first m= line on.
	answer []string
	// origin is the address its o= and session c= name; "" for its own ([media_ip]).
	origin string
	// play plays rtp.pcap to the offer's address on the ACK.
	play bool
	// reinvite, when set, is the SDP of its answer to a re-INVITE.
	reinvite []string
}

const sdpHead = `v=0
o=sipcar-test 1 %d IN IP[media_ip_type] %s
s=-
c=IN IP[media_ip_type] %s
t=0 0
`

func sdpBody(version int, addr string, media []string) string {
	if addr == "" {
		addr = "[media_ip]"
	}
	return fmt.Sprintf(sdpHead, version, addr, addr) + strings.Join(media, "\n") + "\n"
}

// uacHeaders are the headers a caller's requests share (the dialog's).
func (s uacScenario) headers(method string, cseq int, inDialog bool) string {
	target, to, routes := "sip:[service]@[remote_ip]:[remote_port]", "", ""
	if inDialog {
		target, to, routes = "[next_url]", "[peer_tag_param]", "[routes]\n"
	}
	contact := "[local_port]"
	if s.contactPort != 0 {
		contact = fmt.Sprint(s.contactPort)
	}
	return fmt.Sprintf(`%s %s SIP/2.0
%sVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
To: [service] <sip:[service]@[remote_ip]:[remote_port]>%s
Call-ID: [call_id]
CSeq: %d %s
Contact: sip:sipp@[local_ip]:%s;transport=[transport]
Max-Forwards: 70
`, method, target, routes, to, cseq, method, contact)
}

func send(msg string, retrans bool) string {
	attr := ""
	if retrans {
		attr = ` retrans="500"`
	}
	return "<send" + attr + "><![CDATA[\n\n" + msg + "\n]]></send>\n"
}

func withSDP(headers, body string) string {
	return headers + "Content-Type: application/sdp\nContent-Length: [len]\n\n" + body
}

func noBody(headers string) string { return headers + "Content-Length: 0\n\n" }

func (s uacScenario) xml() string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="ISO-8859-1" ?>` + "\n<scenario name=\"generated uac\">\n")
	b.WriteString(send(withSDP(s.headers("INVITE", 1, false), sdpBody(1, "", s.offer)), true))
	b.WriteString(`<recv response="100" optional="true"/>` + "\n")
	if s.refused != 0 {
		fmt.Fprintf(&b, "<recv response=\"%d\"/>\n", s.refused)
		// The ACK of a non-2xx final response is part of the INVITE transaction (RFC 3261
		// section 17.1.1.3): its Via and To are the response's.
		b.WriteString(send(`ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
[last_Via:]
From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag09[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0
`, false))
		b.WriteString("</scenario>\n")
		return b.String()
	}
	b.WriteString(`<recv response="180" optional="true"/>` + "\n" + `<recv response="200" rrs="true"/>` + "\n")
	b.WriteString(send(noBody(s.headers("ACK", 1, true)), false))
	if s.play {
		b.WriteString(`<nop><action><exec play_pcap_audio="rtp.pcap"/></action></nop>` + "\n")
	}
	fmt.Fprintf(&b, "<pause milliseconds=\"%d\"/>\n", s.pauseMS)
	cseq := 2
	if s.hold != nil {
		b.WriteString(send(withSDP(s.headers("INVITE", cseq, true), sdpBody(2, "", s.hold)), true))
		b.WriteString(`<recv response="100" optional="true"/>` + "\n" + `<recv response="200"/>` + "\n")
		b.WriteString(send(noBody(s.headers("ACK", cseq, true)), false))
		fmt.Fprintf(&b, "<pause milliseconds=\"%d\"/>\n", s.holdPauseMS)
		cseq++
	}
	b.WriteString(send(noBody(s.headers("BYE", cseq, true)), true))
	b.WriteString(`<recv response="200" crlf="true"/>` + "\n</scenario>\n")
	return b.String()
}

// uac runs sipp as the caller of s (its scenario and Call-ID set on o) inside ns.
func (tb *testbed) uac(ns *netns, name string, s uacScenario, o sippOpts) *sippProc {
	tb.t.Helper()
	o.scenario = tb.scenario(name, s.xml())
	o.extra = append(o.extra, "-cid_str", s.callID)
	return tb.sipp(ns, name, o)
}

// uas runs sipp as the callee of s inside ns.
func (tb *testbed) uas(ns *netns, name string, s uasScenario, o sippOpts) *sippProc {
	tb.t.Helper()
	o.scenario = tb.scenario(name, s.xml())
	return tb.sipp(ns, name, o)
}

func (s uasScenario) xml() string {
	// The answer to the INVITE adds its To tag; a re-INVITE's To carries it already.
	response := func(code int, reason, body string, inDialog bool) string {
		to := "[last_To:];tag=[pid]SIPpTag01[call_number]"
		if inDialog {
			to = "[last_To:]"
		}
		h := fmt.Sprintf(`SIP/2.0 %d %s
[last_Via:]
[last_Record-Route:]
[last_From:]
%s
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
`, code, reason, to)
		if body == "" {
			return noBody(h)
		}
		return withSDP(h, body)
	}
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="ISO-8859-1" ?>` + "\n<scenario name=\"generated uas\">\n")
	b.WriteString(`<recv request="INVITE" crlf="true"/>` + "\n")
	b.WriteString(send(response(180, "Ringing", "", false), false))
	b.WriteString(send(response(200, "OK", sdpBody(1, s.origin, s.answer), false), true))
	if s.play {
		b.WriteString(`<recv request="ACK" crlf="true"><action><exec play_pcap_audio="rtp.pcap"/></action></recv>` + "\n")
	} else {
		b.WriteString(`<recv request="ACK" crlf="true"/>` + "\n")
	}
	if s.reinvite != nil {
		b.WriteString(`<recv request="INVITE"/>` + "\n")
		b.WriteString(send(response(200, "OK", sdpBody(2, s.origin, s.reinvite), true), true))
		b.WriteString(`<recv request="ACK"/>` + "\n")
	}
	b.WriteString(`<recv request="BYE"/>` + "\n")
	b.WriteString(send(`SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0
`, false))
	b.WriteString("</scenario>\n")
	return b.String()
}

// scenario writes a generated scenario into the testbed's directory (not among the logs a
// failure prints) and returns its path, for [sippOpts.scenario].
func (tb *testbed) scenario(name, xml string) string {
	tb.t.Helper()
	dir := filepath.Join(tb.dir, "scenarios")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.t.Fatal(err)
	}
	p := filepath.Join(dir, name+".xml")
	if err := os.WriteFile(p, []byte(xml), 0o644); err != nil {
		tb.t.Fatal(err)
	}
	return p
}
