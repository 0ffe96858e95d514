//go:build !linux

package mediarelay

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Outside Linux fan-in cannot be had: ModeFanIn says so, and ModeAuto falls back to the ports'
// own sockets and says why, per side.
func TestFanInNeedsLinux(t *testing.T) {
	if r, err := New(Config{PortMin: 41000, PortMax: 41099, Mode: ModeFanIn}); !errors.Is(err, errors.ErrUnsupported) {
		if err == nil {
			r.Close()
		}
		t.Errorf("New in fan-in mode = %v, want an error wrapping errors.ErrUnsupported", err)
	}
	r, err := New(Config{PortMin: 41000, PortMax: 41099, Sides: []Side{{Name: "inside"}, {Name: "public"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.FanIn() {
		t.Error("FanIn outside Linux")
	}
	want := []SidePath{
		{Side: "inside", Path: PathPerPort, Reason: "no-fanin", Detail: "no fan-in: it needs Linux"},
		{Side: "public", Path: PathPerPort, Reason: "no-fanin", Detail: "no fan-in: it needs Linux"},
	}
	if diff := cmp.Diff(want, r.Paths()); diff != "" {
		t.Errorf("Paths (-want +got):\n%s", diff)
	}
}
