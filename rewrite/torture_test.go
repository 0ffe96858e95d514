package rewrite

import (
	"bufio"
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// tolerated are the messages RFC 4475 calls invalid that sipcar carries on purpose, with the
// header it does not judge: the RFC allows rejecting them, but what is wrong sits in a header that
// sipcar never rewrites (README, "Tolerated"), so the next hop decides.
var tolerated = map[string]string{
	"rfc4475/badaspec.dat": "To", // spaces inside the To URI's angle brackets
}

// The SIP torture test messages of RFC 4475 and RFC 5118 (testdata/torture, see its README):
// every valid one must parse and be rewritten with all non-address bytes unchanged and no inside
// address left; every invalid one must be refused with an *Error that says what is wrong, but
// for the tolerated ones, which must be carried with that header unchanged.
func TestTorture(t *testing.T) {
	f, err := os.Open("testdata/torture/MANIFEST.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The messages use the documentation prefixes; treat them all as inside, so that every
	// address literal is translated.
	nets := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("::ffff:192.0.2.0/120")}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		cols := strings.SplitN(line, "\t", 4)
		if len(cols) != 4 {
			t.Fatalf("manifest line %q", line)
		}
		file, verdict, section, summary := cols[0], cols[1], cols[2], cols[3]
		n++
		t.Run(strings.TrimSuffix(filepath.Base(file), ".dat"), func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata/torture", file))
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(file, "rfc5118/") {
				in = fixRFC5118(in)
			}
			var m Message
			err = Parse(in, &m)
			hdr, tolerate := tolerated[file]
			if verdict == "invalid" && !tolerate {
				var perr *Error
				if !errors.As(err, &perr) {
					t.Fatalf("RFC %s section %s (%s): parsed without error", file[3:7], section, summary)
				}
				if perr.Reason == "" || perr.Where == "" {
					t.Errorf("error says too little: %v", perr)
				}
				t.Logf("refused: %v", perr)
				return
			}
			if err != nil {
				t.Fatalf("section %s (%s): %v", section, summary, err)
			}
			nat := newNAT()
			nat.insideNets = nets
			nat.insideAddr, nat.publicAddr = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("203.0.113.1")
			nat.insideAddr6, nat.publicAddr6 = netip.MustParseAddr("fd00:1::1"), netip.MustParseAddr("2001:4860::1")
			var r Result
			if err := Rewrite(&r, &m, Inside, nat); err != nil {
				t.Fatalf("rewrite: %v", err)
			}
			checkInvariants(t, file, m.Bytes(), &r)
			if leak := insideLeaks(r.Out, nets); leak != "" {
				t.Errorf("inside address left in %s", leak)
			}
			if tolerate {
				var out Message
				if err := Parse(r.Out, &out); err != nil {
					t.Fatal(err)
				}
				want, _ := m.Header(hdr)
				if got, _ := out.Header(hdr); !bytes.Equal(got, want) {
					t.Errorf("%s changed: %q, want %q", hdr, got, want)
				}
			}
		})
	}
	if n != 61 {
		t.Errorf("manifest lists %d messages, want the 61 of RFC 4475 and RFC 5118", n)
	}
}

// fixRFC5118 undoes what RFC 5118's archive got wrong (testdata/torture/README.md): its messages
// have LF line endings, two lack the empty line after the headers, and three declare a
// Content-Length that is not their body's.
func fixRFC5118(in []byte) []byte {
	in = bytes.ReplaceAll(in, []byte("\n"), []byte("\r\n"))
	head, body, found := bytes.Cut(in, []byte("\r\n\r\n"))
	if !found {
		head, body = bytes.TrimSuffix(in, []byte("\r\n")), nil
	}
	lines := bytes.Split(head, []byte("\r\n"))
	for i, l := range lines {
		if k := kindOf(bytes.TrimSpace(l[:max(bytes.IndexByte(l, ':'), 0)])); k == hContentLength {
			lines[i] = []byte("Content-Length: " + strconv.Itoa(len(body)))
		}
	}
	return append(append(bytes.Join(lines, []byte("\r\n")), "\r\n\r\n"...), body...)
}
