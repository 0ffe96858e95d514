// Command ngctl sets up calls on rtpengine through its NG control protocol (bencoded
// dictionaries over UDP) for the benchmark, and writes them as an rtpload pairs file: for
// call i, endpoint A a-addr:a-port+2i offers, endpoint B b-addr:b-port+2i answers, and the
// ports rtpengine allocated on each side come back in the rewritten SDP.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"time"
)

func main() {
	ng := flag.String("ng", "127.0.0.1:2223", "rtpengine's NG address")
	calls := flag.Int("calls", 500, "calls to set up")
	a := flag.String("a", "198.18.0.2:30000", "endpoint A of call 0 (call i: port+2i)")
	b := flag.String("b", "198.51.100.2:40000", "endpoint B of call 0 (call i: port+2i)")
	out := flag.String("o", "", "pairs file to write (default stdout)")
	flag.Parse()
	if err := run(*ng, *calls, *a, *b, *out); err != nil {
		fmt.Fprintln(os.Stderr, "ngctl:", err)
		os.Exit(1)
	}
}

func run(ng string, calls int, aStr, bStr, out string) error {
	a, err := netip.ParseAddrPort(aStr)
	if err != nil {
		return err
	}
	b, err := netip.ParseAddrPort(bStr)
	if err != nil {
		return err
	}
	conn, err := net.Dial("udp", ng)
	if err != nil {
		return err
	}
	defer conn.Close()
	c := &client{conn: conn}
	if _, err := c.call(map[string]any{"command": "ping"}); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	var buf bytes.Buffer
	for i := range calls {
		ai := netip.AddrPortFrom(a.Addr(), a.Port()+uint16(2*i))
		bi := netip.AddrPortFrom(b.Addr(), b.Port()+uint16(2*i))
		id := fmt.Sprint("bench-", i)
		offer, err := c.call(map[string]any{"command": "offer", "call-id": id, "from-tag": "a" + id,
			"sdp": sdp(ai), "direction": []any{"in", "out"}})
		if err != nil {
			return fmt.Errorf("offer %s: %w", id, err)
		}
		relayB, err := mediaAddr(offer)
		if err != nil {
			return fmt.Errorf("offer %s: %w", id, err)
		}
		answer, err := c.call(map[string]any{"command": "answer", "call-id": id, "from-tag": "a" + id,
			"to-tag": "b" + id, "sdp": sdp(bi)})
		if err != nil {
			return fmt.Errorf("answer %s: %w", id, err)
		}
		relayA, err := mediaAddr(answer)
		if err != nil {
			return fmt.Errorf("answer %s: %w", id, err)
		}
		fmt.Fprintf(&buf, "%v %v %v %v\n", ai, relayA, bi, relayB)
	}
	if out == "" {
		_, err = os.Stdout.Write(buf.Bytes())
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

func sdp(a netip.AddrPort) string {
	return fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 %[1]s\r\ns=-\r\nc=IN IP4 %[1]s\r\nt=0 0\r\nm=audio %[2]d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
		a.Addr(), a.Port())
}

var (
	reConn = regexp.MustCompile(`(?m)^c=IN IP4 (\S+)\r?$`)
	reAud  = regexp.MustCompile(`(?m)^m=audio (\d+) `)
)

// mediaAddr finds the audio address in the SDP of an NG reply.
func mediaAddr(reply map[string]any) (netip.AddrPort, error) {
	s, _ := reply["sdp"].(string)
	c, m := reConn.FindStringSubmatch(s), reAud.FindStringSubmatch(s)
	if c == nil || m == nil {
		return netip.AddrPort{}, fmt.Errorf("no audio address in reply %v", reply)
	}
	return netip.ParseAddrPort(c[1] + ":" + m[1])
}

type client struct {
	conn net.Conn
	seq  int
}

// call sends one NG command ("cookie bencoded-dict") and returns the reply's dictionary.
func (c *client) call(cmd map[string]any) (map[string]any, error) {
	c.seq++
	cookie := fmt.Sprintf("c%d_%d", os.Getpid(), c.seq)
	var msg bytes.Buffer
	msg.WriteString(cookie + " ")
	encode(&msg, cmd)
	if _, err := c.conn.Write(msg.Bytes()); err != nil {
		return nil, err
	}
	buf := make([]byte, 65536)
	for {
		c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.conn.Read(buf)
		if err != nil {
			return nil, err
		}
		reply, ok := bytes.CutPrefix(buf[:n], []byte(cookie+" "))
		if !ok {
			continue // a late reply to an earlier command
		}
		v, _, err := decode(reply)
		if err != nil {
			return nil, err
		}
		d, ok := v.(map[string]any)
		if !ok {
			return nil, errors.New("reply is not a dictionary")
		}
		if r, _ := d["result"].(string); r != "ok" && r != "pong" {
			return nil, fmt.Errorf("result %q: %v", r, d["error-reason"])
		}
		return d, nil
	}
}

// encode writes v in bencode: strings, integers, lists and dictionaries (sorted keys).
func encode(w *bytes.Buffer, v any) {
	switch v := v.(type) {
	case string:
		fmt.Fprintf(w, "%d:%s", len(v), v)
	case int:
		fmt.Fprintf(w, "i%de", v)
	case []any:
		w.WriteByte('l')
		for _, e := range v {
			encode(w, e)
		}
		w.WriteByte('e')
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		w.WriteByte('d')
		for _, k := range keys {
			encode(w, k)
			encode(w, v[k])
		}
		w.WriteByte('e')
	default:
		panic(fmt.Sprintf("bencode: unsupported %T", v)) // a programming error in this tool
	}
}

// decode reads one bencoded value from b and returns it with the rest of b.
func decode(b []byte) (any, []byte, error) {
	if len(b) == 0 {
		return nil, nil, errors.New("bencode: truncated")
	}
	switch b[0] {
	case 'i':
		end := bytes.IndexByte(b, 'e')
		if end < 0 {
			return nil, nil, errors.New("bencode: unterminated integer")
		}
		n, err := strconv.Atoi(string(b[1:end]))
		return n, b[end+1:], err
	case 'l':
		var list []any
		b = b[1:]
		for len(b) > 0 && b[0] != 'e' {
			var v any
			var err error
			if v, b, err = decode(b); err != nil {
				return nil, nil, err
			}
			list = append(list, v)
		}
		if len(b) == 0 {
			return nil, nil, errors.New("bencode: unterminated list")
		}
		return list, b[1:], nil
	case 'd':
		d := map[string]any{}
		b = b[1:]
		for len(b) > 0 && b[0] != 'e' {
			k, rest, err := decode(b)
			if err != nil {
				return nil, nil, err
			}
			key, ok := k.(string)
			if !ok {
				return nil, nil, errors.New("bencode: dictionary key is not a string")
			}
			var v any
			if v, b, err = decode(rest); err != nil {
				return nil, nil, err
			}
			d[key] = v
		}
		if len(b) == 0 {
			return nil, nil, errors.New("bencode: unterminated dictionary")
		}
		return d, b[1:], nil
	}
	colon := bytes.IndexByte(b, ':')
	if colon < 0 {
		return nil, nil, errors.New("bencode: bad string length")
	}
	n, err := strconv.Atoi(string(b[:colon]))
	if err != nil || n < 0 || colon+1+n > len(b) {
		return nil, nil, errors.New("bencode: bad string length")
	}
	return string(b[colon+1 : colon+1+n]), b[colon+1+n:], nil
}
