package integration

import (
	"bytes"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// generateProtosSuite makes a suite after PROTOS c07-sip's design, for runs without the PROTOS
// material: the same template INVITE and CANCEL, PROTOS's test groups in its order, and each
// group's field replaced in turn by anomalies of PROTOS's kinds (overflows of many lengths, format
// strings, integer boundaries, special and control characters, invalid UTF-8, CR/LF anomalies,
// empty values, malformed IPv4 addresses, ANSI escapes). The anomaly lists are ours, written
// out below; nothing is random, so every run sends the same cases. Case 0 is the valid INVITE.
func generateProtosSuite() []protosCase {
	var cases []protosCase
	for _, g := range protosGroups {
		field, anomalies := protosGroupAnomalies(g.name)
		for _, a := range anomalies {
			num := len(cases)
			f := protosTemplateFields(num)
			if field != "" {
				if f[field] == a {
					continue // not an anomaly in this field
				}
				f[field] = a
			}
			invite, teardown := renderProtosTemplate(f)
			cases = append(cases, protosCase{num: num, group: g.name, invite: invite, teardown: teardown})
		}
	}
	return cases
}

// protosTemplateFields are the fields of the template for case num: each is one thing a group
// replaces. The case number is written where PROTOS writes it (display names, tags, the branch,
// the SDP origin), so that each case's PDUs are its own.
func protosTemplateFields(num int) map[string]string {
	n := strconv.Itoa(num)
	return map[string]string{
		"method": "INVITE", "request-uri": "sip:<To>", "version": "SIP/2.0", "request-crlf": "\r\n",
		"via-version": "SIP/2.0", "via-host": "<From-Address>", "via-hostcolon": ":", "via-hostport": "<Local-Port>",
		"via-tag":          "branch=z9hG4bK0000" + n + "<Branch-ID>",
		"from-displayname": n, "from-colon": ":", "from-uri": "sip:<From>", "from-tag": "tag=" + n,
		"to": "To", "to-left": "<", "to-right": ">",
		"call-id-value": "<Call-ID>", "call-id-at": "@", "call-id-ip": "<From-Address>",
		"cseq-integer": "<CSeq>", "cseq-string": "INVITE",
		"contact-displayname": n, "contact-uri": "sip:<From>", "contact-left": "<", "contact-right": ">",
		"expires": "1200", "max-forwards": "70", "content-type": "application/sdp", "content-length": "<Content-Length>",
		"crlf-request": "\r\n",
		"v-identifier": "v", "v-equal": "=", "v-integer": "0",
		"o-username": n, "o-sessionid": n, "o-networktype": "IN", "o-ip": "<From-Address>",
		"session": "Session SDP", "c-networktype": "IN", "c-ip": "<From-IP>",
		"t-start": "0", "t-stop": " 0",
		"m-media": "audio", "m-port": "9876", "m-transport": "RTP/AVP", "m-type": "0",
		"a-rtpmap": "rtpmap", "a-colon": ":", "a-payloadtype": "0", "a-encodingname": "PCMU", "a-slash": "/",
		"a-clockrate": "8000", "a-crlf": "\r\n",
	}
}

// renderProtosTemplate writes the INVITE and its CANCEL from the fields. The CANCEL shares the
// request URI, Via, From, To, Call-ID and CSeq number with the INVITE, anomalies included.
func renderProtosTemplate(f map[string]string) (invite, teardown []byte) {
	via := "Via: " + f["via-version"] + "/UDP " + f["via-host"] + f["via-hostcolon"] + f["via-hostport"] + ";" + f["via-tag"] + "\r\n"
	from := "From" + f["from-colon"] + " " + f["from-displayname"] + " <" + f["from-uri"] + ">;" + f["from-tag"] + "\r\n"
	to := f["to"] + ": Receiver " + f["to-left"] + "sip:<To>" + f["to-right"] + "\r\n"
	callID := "Call-ID: " + f["call-id-value"] + f["call-id-at"] + f["call-id-ip"] + "\r\n"
	var b strings.Builder
	b.WriteString(f["method"] + " " + f["request-uri"] + " " + f["version"] + f["request-crlf"])
	b.WriteString(via + from + to + callID)
	b.WriteString("CSeq: " + f["cseq-integer"] + " " + f["cseq-string"] + "\r\n")
	b.WriteString("Contact: " + f["contact-displayname"] + " " + f["contact-left"] + f["contact-uri"] + f["contact-right"] + "\r\n")
	b.WriteString("Expires: " + f["expires"] + "\r\nMax-Forwards: " + f["max-forwards"] + "\r\n")
	b.WriteString("Content-Type: " + f["content-type"] + "\r\nContent-Length: " + f["content-length"] + "\r\n")
	b.WriteString(f["crlf-request"])
	b.WriteString(f["v-identifier"] + f["v-equal"] + f["v-integer"] + "\r\n")
	b.WriteString("o=" + f["o-username"] + " " + f["o-sessionid"] + " " + f["o-username"] + " " + f["o-networktype"] + " IP4 " + f["o-ip"] + "\r\n")
	b.WriteString("s=" + f["session"] + "\r\n")
	b.WriteString("c=" + f["c-networktype"] + " IP4 " + f["c-ip"] + "\r\n")
	b.WriteString("t=" + f["t-start"] + f["t-stop"] + "\r\n")
	b.WriteString("m=" + f["m-media"] + " " + f["m-port"] + " " + f["m-transport"] + " " + f["m-type"] + "\r\n")
	b.WriteString("a=" + f["a-rtpmap"] + f["a-colon"] + f["a-payloadtype"] + " " + f["a-encodingname"] + f["a-slash"] + f["a-clockrate"] + f["a-crlf"])
	invite = []byte(b.String())

	b.Reset()
	b.WriteString("<Teardown-Method> " + f["request-uri"] + " SIP/2.0\r\n")
	b.WriteString(via + from + to + callID)
	b.WriteString("CSeq: " + f["cseq-integer"] + " <Teardown-Method>\r\nContent-Length: 0\r\n\r\n")
	return invite, []byte(b.String())
}

// protosGroupAnomalies returns the template field a group replaces and the values it puts there
// ("" and one value for the valid case).
func protosGroupAnomalies(group string) (field string, anomalies []string) {
	strs, ints, ips, uris := stringAnomalies(), integerAnomalies(), ipv4Anomalies(), uriAnomalies()
	switch group {
	case "valid":
		return "", []string{""}
	case "sip-method":
		return "method", strs
	case "sip-request-uri":
		return "request-uri", uris
	case "sip-version":
		return "version", versionAnomalies()
	case "sip-via-host":
		return "via-host", ips
	case "sip-via-hostcolon":
		return "via-hostcolon", repeatAnomalies(":")
	case "sip-via-hostport":
		return "via-hostport", ints
	case "sip-via-version":
		return "via-version", versionAnomalies()
	case "sip-via-tag":
		return "via-tag", paramAnomalies("branch", "z9hG4bK0000<Branch-ID>")
	case "sip-from-displayname":
		return "from-displayname", strs
	case "sip-from-tag":
		return "from-tag", paramAnomalies("tag", "4711")
	case "sip-from-colon":
		return "from-colon", repeatAnomalies(":")
	case "sip-from-uri":
		return "from-uri", uris
	case "sip-contact-displayname":
		return "contact-displayname", strs
	case "sip-contact-uri":
		return "contact-uri", uris
	case "sip-contact-left-paranthesis":
		return "contact-left", repeatAnomalies("<")
	case "sip-contact-right-paranthesis":
		return "contact-right", repeatAnomalies(">")
	case "sip-to":
		return "to", strs
	case "sip-to-left-paranthesis":
		return "to-left", repeatAnomalies("<")
	case "sip-to-right-paranthesis":
		return "to-right", repeatAnomalies(">")
	case "sip-call-id-value":
		return "call-id-value", strs
	case "sip-call-id-at":
		return "call-id-at", repeatAnomalies("@")
	case "sip-call-id-ip":
		return "call-id-ip", ips
	case "sip-expires":
		return "expires", ints
	case "sip-max-forwards":
		return "max-forwards", ints
	case "sip-cseq-integer":
		return "cseq-integer", ints
	case "sip-cseq-string":
		return "cseq-string", strs
	case "sip-content-type":
		return "content-type", append(mediaTypeAnomalies(), strs...)
	case "sip-content-length":
		return "content-length", ints
	case "sip-request-crlf":
		return "request-crlf", crlfAnomalies()
	case "crlf-request":
		return "crlf-request", crlfAnomalies()
	case "sdp-attribute-crlf":
		return "a-crlf", crlfAnomalies()
	case "sdp-proto-v-identifier":
		return "v-identifier", strs
	case "sdp-proto-v-equal":
		return "v-equal", repeatAnomalies("=")
	case "sdp-proto-v-integer":
		return "v-integer", ints
	case "sdp-origin-username":
		return "o-username", strs
	case "sdp-origin-sessionid":
		return "o-sessionid", ints
	case "sdp-origin-networktype":
		return "o-networktype", strs
	case "sdp-origin-ip":
		return "o-ip", ips
	case "sdp-session":
		return "session", strs
	case "sdp-connection-networktype":
		return "c-networktype", strs
	case "sdp-connection-ip":
		return "c-ip", ips
	case "sdp-time-start":
		return "t-start", ints
	case "sdp-time-stop":
		return "t-stop", []string{""}
	case "sdp-media-media":
		return "m-media", strs
	case "sdp-media-port":
		return "m-port", ints
	case "sdp-media-transport":
		return "m-transport", strs
	case "sdp-media-type":
		return "m-type", ints
	case "sdp-attribute-rtpmap":
		return "a-rtpmap", strs
	case "sdp-attribute-colon":
		return "a-colon", repeatAnomalies(":")
	case "sdp-attribute-payloadtype":
		return "a-payloadtype", ints
	case "sdp-attribute-encodingname":
		return "a-encodingname", strs
	case "sdp-attribute-slash":
		return "a-slash", repeatAnomalies("/")
	case "sdp-attribute-clockrate":
		return "a-clockrate", ints
	}
	panic("protos: no anomalies for group " + group)
}

// overflowLengths are the lengths of overflows: around the powers of two and the sizes parsers
// reserve, up to past what a UDP datagram holds and past sipcar's 64 KiB limit on streams.
var overflowLengths = []int{9, 17, 33, 65, 127, 128, 255, 256, 513, 1025, 1270, 2049, 4097, 8193, 16385, 32769, 60000, 70000, 131073}

// stringAnomalies are the values put into a field that holds text.
func stringAnomalies() []string {
	var out []string
	add := func(s ...string) { out = append(out, s...) }
	add("")
	for _, n := range overflowLengths {
		add(strings.Repeat("a", n))
	}
	for _, n := range []int{1, 9, 33, 256, 1025, 16385, 60000} {
		add(strings.Repeat(" ", n))
	}
	// Latin-1 text (invalid UTF-8) and the same letters in UTF-8.
	for _, n := range []int{1, 3, 11, 43, 171, 683, 5462} {
		add(strings.Repeat("\xe5\xe4\xf6", n))
	}
	for _, n := range []int{1, 43, 683, 5462} {
		add(strings.Repeat("åäö", n))
	}
	// NUL bytes.
	add("\x00", "\x00\x00aaaaaaaaa", "a\x00a", "aaaaaaaaa\x00aaaaaaaaa", strings.Repeat("\x00", 256),
		strings.Repeat("\x00", 16385), strings.Repeat("a\x00", 1025), strings.Repeat("\\\x00", 1025))
	// Format strings.
	for _, n := range []int{1, 3, 17, 65, 1025} {
		add(strings.Repeat("%s", n))
	}
	for _, n := range []int{1, 3, 17, 240} {
		add(strings.Repeat("%n", n))
	}
	add(strings.Repeat("%x", 8), strings.Repeat("%x", 64), "%s%x%n", strings.Repeat("%.*d", 5),
		strings.Repeat("%*d", 33), strings.Repeat("%*.*s", 17), "%99999999999s", "%-2147483648d")
	for _, p := range []int{127, 555, 999, 1270, 4097, 9999, 12700, 127000, 2147483647} {
		add("%." + strconv.Itoa(p) + "d")
	}
	// Invalid UTF-8: lone bytes, repeated lone bytes, overlong forms, truncated sequences,
	// surrogates, noncharacters and code points past U+10FFFF, byte order marks.
	for _, c := range []byte{0x80, 0xbf, 0xc0, 0xc1, 0xdf, 0xe0, 0xef, 0xf0, 0xf7, 0xf8, 0xfb, 0xfc, 0xfd, 0xfe, 0xff} {
		add(string([]byte{c}))
	}
	for _, c := range []byte{0xc0, 0xf7, 0xfd, 0xfe, 0xff} {
		add(strings.Repeat(string([]byte{c}), 9))
	}
	for _, c := range []byte{0x80, 0xfe, 0xff} {
		add(strings.Repeat(string([]byte{c}), 1025))
	}
	add("\xc0\x80", "\xe0\x80\x80", "\xf0\x80\x80\x80", "\xf8\x80\x80\x80\x80", "\xfc\x80\x80\x80\x80\x80",
		"\xc0\xaf", "\xe0\x80\xaf", "\xf0\x80\x80\xaf", "\xf8\x80\x80\x80\xaf", "\xfc\x80\x80\x80\x80\xaf",
		"\xc1\xbf", "\xe0\x9f\xbf", "\xf0\x8f\xbf\xbf")
	add("\xe0\x80", "\xf0\x80\x80", "\xef\xbf", "\xf4\x8f\xbf")
	add("\xed\xa0\x80", "\xed\xad\xbf", "\xed\xae\x80", "\xed\xaf\xbf", "\xed\xb0\x80", "\xed\xbe\x80",
		"\xed\xbf\xbf", "\xed\xa0\x80\xed\xb0\x80", strings.Repeat("\xed\xad\xbf", 683))
	add("\xef\xbf\xbe", "\xef\xbf\xbf", "\xf4\x90\x80\x80", "\xf7\xbf\xbf\xbf")
	add("\xef\xbb\xbf", "\xfe\xff", "\xff\xfe", strings.Repeat("\xfe\xff", 33))
	var high, c0 []byte
	for c := 0x80; c <= 0xff; c++ {
		high = append(high, byte(c))
	}
	for c := 0x01; c < 0x20; c++ {
		c0 = append(c0, byte(c))
	}
	add(string(high), string(c0), strings.Repeat("\x7f", 9))
	// ANSI escape sequences.
	add("\x1b[3;5;7;32;44maa", "\x1b[2J\x1b[H", "\x1b]0;sipcar\x07", "\x1bc",
		"\x1b[2;8;16;32;64;128;255;512;1024;2048;4096;16384;33333;66666;128888maa", "\x1b["+strings.Repeat("3;", 1025)+"m")
	// Escapes written out, and control characters.
	add(`\t\b\b`, "\t\b\b", `\x00`, `\r\n`, "\t", "\v\f", "\b")
	// CR and LF inside a value: a header or a body line injected.
	add("a\r\nX-Injected: yes", "a\rb", "a\nb", "\r\n\r\n", "a\r\n\r\nv=0", "a\r\n b", "\r", "\n")
	// Characters that delimit something in SIP, alone and repeated.
	for _, c := range []string{`"`, `\`, "<", ">", ";", ",", "=", "@", ":", "%", "*", "?", "&", "[", "]", "/"} {
		add(c, strings.Repeat(c, 1025))
	}
	// Escaped octets.
	add("%00", "%25%30%30", "%ff%fe", "%", "%%%%", "%zz", strings.Repeat("%41", 1025))
	return out
}

// integerAnomalies are the values put into a field that holds a number: the boundaries of
// integer types (2^n - 1, 2^n, 2^n + 1 and their negatives), numbers written oddly, and none.
func integerAnomalies() []string {
	out := []string{"", "-", "+1", " 1", "1 ", "0x10", "1e9", "1.5", "00000000000000000001", "-0", "0", "a"}
	for _, bits := range []uint{7, 8, 15, 16, 31, 32, 63, 64, 128} {
		p := new(big.Int).Lsh(big.NewInt(1), bits)
		minus1 := new(big.Int).Sub(p, big.NewInt(1))
		plus1 := new(big.Int).Add(p, big.NewInt(1))
		out = append(out, minus1.String(), p.String(), plus1.String(), "-"+p.String())
	}
	out = append(out, strings.Repeat("9", 1025), "-"+strings.Repeat("9", 60000))
	return out
}

// ipv4Anomalies are the values put into a field that holds an IPv4 address: malformed and odd
// dotted quads, other notations, names where an address goes, and the string anomalies that
// PROTOS also puts there (one in three of them). The few well-formed addresses name nothing
// outside the test's own ranges.
func ipv4Anomalies() []string {
	out := []string{
		"203.0.113.256", "203.0.113.-1", "203.0.113.4095", "203.0.113.a", "-255.0.113.1", "-1",
		"v.x.y.z", "203.0.113", "203.0.113.1.2", "203..113.1", ".203.0.113.1", "203.0.113.1.",
		"00.000.00.0", "000000203.0.113.1", "203.000000000.113.1", "0xcb.0.113.1", "0313.0.0161.1",
		"3405803777", "203.0.113.1/24", "203.0.113.1:5060:5060", "203.0.113.1%eth0", "[203.0.113.1]",
		"[::1]", "::ffff:203.0.113.1", "2001:db8:c::1", "[2001:db8:c::1", "999.999.999.999",
		" 203.0.113.1", "203.0.113.1 ", "203.0.113.1\x00", "203 .0.113.1", "0.0.0.0", "255.255.255.255",
		"224.0.0.1", "127.0.0.1", "203.0.113.7", "sip.no.invalid", strings.Repeat("a.", 128) + "a",
		strings.Repeat("a", 255), "-a-.invalid", "_sip._udp.invalid", "a..b", strings.Repeat("1.", 2048) + "1",
	}
	for i, s := range stringAnomalies() {
		if i%3 == 0 {
			out = append(out, s)
		}
	}
	return out
}

// uriAnomalies are the values put into a field that holds a SIP URI.
func uriAnomalies() []string {
	out := []string{"", "sip:", "sip:@", "sip:noone@", ":noone@sip.no.invalid", "SIP:<To>", "sips:<To>",
		"tel:+15555550100", "sip:noone@sip.no.invalid", "sip:noone@[::1", "sip:noone@sip.no.invalid:0",
		"sip:noone@sip.no.invalid:65536", "sip:noone@sip.no.invalid:-1", "sip:noone@sip.no.invalid:99999999999999999999",
		"sip:noone@sip.no.invalid:", "sip:%00@sip.no.invalid", "sip:%zz@sip.no.invalid", "sip:no one@sip.no.invalid",
		"sip:noone@sip.no.invalid;", "sip:noone@sip.no.invalid;transport=", "sip:noone@sip.no.invalid?",
		"sip:noone@sip.no.invalid>", "<sip:noone@sip.no.invalid>", "sip:noone@00.000.00.0", "sip:noone:secret@sip.no.invalid",
	}
	for _, n := range []int{5, 16, 32, 128, 1025, 16385} {
		out = append(out, strings.Repeat("a", n)+":noone@sip.no.invalid")
	}
	for _, n := range []int{4, 128, 4097} {
		out = append(out, "sip:"+strings.Repeat(":", n)+"sip.no.invalid", "sip:noone"+strings.Repeat("@", n)+"sip.no.invalid",
			"sip:noone@"+strings.Repeat("a.", n)+"invalid", "sip:noone@sip.no.invalid"+strings.Repeat(";", n))
	}
	for _, n := range []int{64, 256, 1025, 16385} {
		out = append(out, "sip:"+strings.Repeat("a", n)+"@sip.no.invalid", "sip:noone@"+strings.Repeat("a", n)+".invalid",
			"sip:noone@sip.no.invalid;transport="+strings.Repeat("a", n))
	}
	out = append(out, "sip:"+strings.Repeat("%s", 65)+"@sip.no.invalid", "sip:noone@"+strings.Repeat("%n", 65),
		"sip:noone@sip.no.invalid?"+strings.Repeat("a=b&", 1025), "sip:\xe5\xe4\xf6@sip.no.invalid", "sip:noone@\xff\xfe")
	return out
}

// versionAnomalies are the values put into a field that holds "SIP/2.0": each of its parts
// replaced by a string, a repetition or an integer anomaly.
func versionAnomalies() []string {
	var out []string
	strs := stringAnomalies()
	for i, s := range strs {
		if i%8 == 0 {
			out = append(out, s+"/2.0")
		}
	}
	for _, r := range repeatAnomalies("/") {
		out = append(out, "SIP"+r+"2.0")
	}
	ints := integerAnomalies()
	for i, n := range ints {
		if i%2 == 0 {
			out = append(out, "SIP/"+n+".0")
		}
	}
	for _, r := range repeatAnomalies(".") {
		out = append(out, "SIP/2"+r+"0")
	}
	for i, n := range ints {
		if i%2 == 1 {
			out = append(out, "SIP/2."+n)
		}
	}
	return append(out, "sip/2.0", "SIP/2.0/", "SIP /2.0", "SIP/3.0", "SIP/1.0", "HTTP/1.1")
}

// repeatLengths are how often a delimiter is repeated: 0 (none) to 33000.
var repeatLengths = []int{0, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 33000}

// repeatAnomalies are a delimiter missing or repeated.
func repeatAnomalies(c string) []string {
	out := make([]string, 0, len(repeatLengths))
	for _, n := range repeatLengths {
		out = append(out, strings.Repeat(c, n))
	}
	return out
}

// paramAnomalies are the values put where a header parameter name=value goes (a Via branch, a
// From tag).
func paramAnomalies(name, value string) []string {
	out := []string{"", name, name + "=", "=" + value, name + "==" + value, name + "=" + value + ";" + name + "=" + value,
		strings.ToUpper(name) + "=" + value, name + " = " + value, name + "=\"" + value + "\"", name + "=" + value + ";",
		name + "=" + value + ";;", name + "=" + value + ";=", name + "=" + value + ";a", name + "=z9hG4bK"}
	for _, n := range []int{1, 16, 1025} {
		out = append(out, strings.Repeat(";", n)+"=token", name+strings.Repeat("=", n)+"token")
	}
	for _, n := range []int{9, 65, 513, 2049, 8193, 33000} {
		out = append(out, strings.Repeat("a", n)+"=token", name+"="+strings.Repeat("a", n))
	}
	for _, n := range []int{3, 33, 1025} {
		out = append(out, strings.TrimSuffix(strings.Repeat(name+"="+value+";", n), ";"))
	}
	for _, s := range []string{"%s%s%s%s", strings.Repeat("%n", 65), "\x00", "\xff\xfe", "\x1b[2J", "a\r\nX-Injected: yes",
		"<>", `"`, "@", ":", ",", "\t"} {
		out = append(out, name+"="+s)
	}
	return out
}

// crlfAnomalies are the values put where a line ends.
func crlfAnomalies() []string {
	return []string{"", "\x00", strings.Repeat("\x00", 256), "\r", "\n", "\n\r", strings.Repeat("\n", 256),
		strings.Repeat("\r", 256), strings.Repeat("\r\n", 128), " \r\n"}
}

// mediaTypeAnomalies are media types that are broken as media types (the string anomalies
// follow them in the group).
func mediaTypeAnomalies() []string {
	out := []string{"application/", "/sdp", "application", "APPLICATION/SDP", "application / sdp", "*/*",
		"application/sdp, application/sdp", "text/plain", "application/sdp;", "application/sdp;charset",
		"application/sdp;charset=", "multipart/mixed;boundary=", "multipart/mixed", "application/sdp\x00",
		"application/sdp;a=\"unterminated"}
	for _, n := range []int{9, 257, 4097, 33000} {
		out = append(out, strings.Repeat("a", n)+"/sdp", "application/"+strings.Repeat("a", n),
			"application/sdp;charset="+strings.Repeat("a", n), "application/sdp"+strings.Repeat(";", n))
	}
	return out
}

// protosSuiteSummary describes a suite: its size and the sizes of its groups.
func protosSuiteSummary(cases []protosCase) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d cases", len(cases))
	last, n := "", 0
	flush := func() {
		if last != "" {
			fmt.Fprintf(&b, ", %s %d", last, n)
		}
	}
	for _, c := range cases {
		if c.group != last {
			flush()
			last, n = c.group, 0
		}
		n++
	}
	flush()
	return b.String()
}

// TestPROTOSGenerator checks the generated suite without running it: the same cases on every
// call, PROTOS's groups in PROTOS's order, on the order of PROTOS's 4,527 cases; the valid case
// a message sipgo parses (INVITE and CANCEL); and every other case different from the valid
// template written for its own number, in the INVITE or the CANCEL.
func TestPROTOSGenerator(t *testing.T) {
	cases, again := generateProtosSuite(), generateProtosSuite()
	t.Log(protosSuiteSummary(cases))
	if len(cases) < 4000 || len(cases) > 5500 {
		t.Errorf("%d generated cases; want about PROTOS's 4,527", len(cases))
	}
	var groups []string
	for i, c := range cases {
		if c.num != i {
			t.Fatalf("case %d numbered %d", i, c.num)
		}
		if !bytes.Equal(c.invite, again[i].invite) || !bytes.Equal(c.teardown, again[i].teardown) {
			t.Fatalf("case %d differs between two generations", i)
		}
		if len(groups) == 0 || groups[len(groups)-1] != c.group {
			groups = append(groups, c.group)
		}
		if i == 0 {
			continue
		}
		invite, teardown := renderProtosTemplate(protosTemplateFields(i))
		if bytes.Equal(c.invite, invite) && bytes.Equal(c.teardown, teardown) {
			t.Errorf("case %d (%s) is the valid template", i, c.group)
		}
	}
	var want []string
	for _, g := range protosGroups {
		want = append(want, g.name)
	}
	if strings.Join(groups, " ") != strings.Join(want, " ") {
		t.Errorf("groups %q; want PROTOS's %q", groups, want)
	}
	fill := protosFill{transport: "udp", token: "protosu0000000", local: "198.51.100.20", port: 5070}
	invite, cancel := cases[0].pdus(fill)
	for _, m := range [][]byte{invite, cancel} {
		if _, err := sip.ParseMessage(m); err != nil {
			t.Errorf("the valid case does not parse: %v\n%s", err, m)
		}
	}
}
