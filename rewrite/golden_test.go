package rewrite

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/emiago/sipgo/sip"
)

var update = flag.Bool("update", false, "write the golden .out files from the current output")

// step is one message of a scenario: the file it is read from (testdata/<dir>/<name>.in), the side
// it comes from, and what the rewrite must have done besides matching <name>.out.
type step struct {
	name  string
	from  Side
	check func(t *testing.T, r *Result)
}

// runScenario rewrites each step's message in order with one translator, so that bindings made
// by earlier messages serve later ones, and compares each output with its golden file.
func runScenario(t *testing.T, dir string, tr Translator, steps []step) {
	t.Helper()
	var res Result
	var m Message
	for _, s := range steps {
		in, err := os.ReadFile(filepath.Join("testdata", dir, s.name+".in"))
		if err != nil {
			t.Fatal(err)
		}
		if err := Parse(in, &m); err != nil {
			t.Fatalf("%s: parse: %v", s.name, err)
		}
		if err := Rewrite(&res, &m, s.from, tr); err != nil {
			t.Fatalf("%s: rewrite: %v", s.name, err)
		}
		golden := filepath.Join("testdata", dir, s.name+".out")
		if *update {
			if err := os.WriteFile(golden, res.Out, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.Out, want) {
			t.Errorf("%s: output differs from %s\n--- got\n%s\n--- want\n%s", s.name, golden, res.Out, want)
		}
		checkInvariants(t, s.name, m.Bytes(), &res)
		if s.from == Inside {
			if leak := insideLeaks(res.Out, testInsideNets); leak != "" {
				t.Errorf("%s: inside address left in %s", s.name, leak)
			}
		}
		if s.check != nil {
			s.check(t, &res)
		}
	}
}

var testInsideNets = []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("2001:db8:a::/64"), netip.MustParsePrefix("172.18.0.0/16")}

// checkInvariants checks what holds for every rewrite: undoing the edits gives the input back,
// the output parses (with this package and with sipgo), and its Content-Length is its body's.
func checkInvariants(t *testing.T, name string, in []byte, r *Result) {
	t.Helper()
	if undone := undo(r); !bytes.Equal(undone, in) {
		t.Errorf("%s: undoing the edits does not give the input back:\n%q\nwant\n%q", name, undone, in)
	}
	var m Message
	if err := Parse(r.Out, &m); err != nil {
		t.Errorf("%s: output does not parse: %v", name, err)
		return
	}
	if cl, ok := m.Header("Content-Length"); ok {
		if n, _ := parseUint(cl, 1<<31); int(n) != len(m.Body()) {
			t.Errorf("%s: Content-Length %s for a body of %d bytes", name, cl, len(m.Body()))
		}
	}
	if _, err := sip.ParseMessage(in); err == nil {
		if _, err := sip.ParseMessage(r.Out); err != nil {
			t.Errorf("%s: sipgo parses the input but not the output: %v", name, err)
		}
	}
}

// undo rebuilds the input from Out and the edits.
func undo(r *Result) []byte {
	var b []byte
	pos := 0 // in Out
	delta := 0
	for _, e := range r.Edits {
		outStart := e.Start + delta
		if !bytes.Equal(r.Out[outStart:outStart+len(e.New)], e.New) {
			return nil
		}
		b = append(b, r.Out[pos:outStart]...)
		b = append(b, e.Old...)
		pos = outStart + len(e.New)
		delta += len(e.New) - (e.End - e.Start)
	}
	return append(b, r.Out[pos:]...)
}
