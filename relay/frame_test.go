package relay

import (
	"strings"
	"testing"
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
