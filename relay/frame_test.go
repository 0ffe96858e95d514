package relay

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

func TestNextFrame(t *testing.T) {
	msg := "OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\n\r\nhello"
	tests := []struct {
		name string
		buf  string
		n    int
		kind frameKind
		err  error
	}{
		{"whole message", msg, len(msg), frameMessage, nil},
		{"two messages in one read", msg + msg, len(msg), frameMessage, nil},
		{"body split", msg[:len(msg)-2], 0, frameNeedMore, nil},
		{"headers split", msg[:10], 0, frameNeedMore, nil},
		{"ping", "\r\n\r\n" + msg, 4, framePing, nil},
		{"half a ping", "\r\n\r", 0, frameNeedMore, nil},
		{"pong", "\r\n", 2, frameSkip, nil},
		{"CRLF before a message", "\r\nOPTIONS", 2, frameSkip, nil},
		{"no Content-Length", "BYE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\nBYE", len("BYE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n"), frameMessage, nil},
		{"LF only", "BYE sip:a@b SIP/2.0\nContent-Length: 2\n\nok", len("BYE sip:a@b SIP/2.0\nContent-Length: 2\n\nok"), frameMessage, nil},
		{"negative length", "BYE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n", 0, frameNeedMore, errFrameLength},
		{"conflicting lengths", "BYE sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab", 0, frameNeedMore, errFrameLength},
		{"too large", "BYE sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n", 0, frameNeedMore, errFrameTooLarge},
		{"endless headers", "BYE sip:a@b SIP/2.0\r\n" + strings.Repeat("X: y\r\n", 12000), 0, frameNeedMore, errFrameTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, kind, err := nextFrame([]byte(tc.buf))
			if n != tc.n || kind != tc.kind || err != tc.err {
				t.Errorf("nextFrame = %d, %v, %v; want %d, %v, %v", n, kind, err, tc.n, tc.kind, tc.err)
			}
		})
	}
}

// FuzzNextFrame: the framer never panics, never frames past its buffer or the size limit, and
// frames a message sipgo's parser frames (in stream mode, with a Content-Length) at the same
// length: sipgo is the oracle, the framer stays the hand-written one because it needs no more
// than the blank line and Content-Length, allocates nothing, and keeps a connection alive on
// messages sipgo's parser refuses (see LIBRARIES.md).
func FuzzNextFrame(f *testing.F) {
	for _, s := range []string{
		"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\n\r\nhello",
		"\r\n\r\nINVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 3\r\n\r\nabcBYE",
		"BYE sip:a@b SIP/2.0\nContent-Length: 2\n\nok",
		"BYE sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab",
		// PROTOS case 2401: a length near the int's range overflowed the framer's sum.
		"INVITE sip:a@b SIP/2.0\r\nContent-Length: 9223372036854775807\r\n\r\nv=0",
	} {
		f.Add([]byte(s))
	}
	parser := sip.NewParser()
	f.Fuzz(func(t *testing.T, buf []byte) {
		n, kind, err := nextFrame(buf)
		if err != nil {
			if n != 0 || kind != frameNeedMore {
				t.Fatalf("error %v with n=%d kind=%v", err, n, kind)
			}
			return
		}
		switch kind {
		case frameNeedMore:
			if n != 0 {
				t.Fatalf("need more with n=%d", n)
			}
		case framePing:
			if n != 4 {
				t.Fatalf("ping of %d bytes", n)
			}
		case frameSkip, frameMessage:
			if n <= 0 || n > len(buf) || n > maxStreamMessage {
				t.Fatalf("%v of %d bytes in a buffer of %d", kind, n, len(buf))
			}
		}
		if kind != frameMessage || !bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
			return
		}
		head, _, _ := bytes.Cut(buf[:n], []byte("\r\n\r\n"))
		if !bytes.Contains(bytes.ToLower(head), []byte("\ncontent-length:")) {
			return
		}
		if _, used, perr := parseStream(parser, buf); perr == nil && used != n {
			t.Fatalf("sipgo frames %d bytes, nextFrame %d:\n%q", used, n, buf)
		}
	})
}

// parseStream is sipgo's stream parse with a panic in it taken as a refusal: its parser is not
// built for hostile input.
func parseStream(p *sip.Parser, buf []byte) (msg sip.Message, n int, err error) {
	defer func() {
		if recover() != nil {
			msg, n, err = nil, 0, errParserPanic
		}
	}()
	return p.Parse(buf, true)
}
