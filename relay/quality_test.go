package relay

import (
	"slices"
	"testing"

	"github.com/sipcar/sipcar/mediarelay"
	"github.com/sipcar/sipcar/rewrite"
)

func TestPayloadTypes(t *testing.T) {
	in := []rewrite.RTPMap{{Type: 0, Encoding: "PCMU", ClockRate: 8000}, {Type: 101, Encoding: "telephone-event", ClockRate: 8000}}
	out := []rewrite.RTPMap{{Type: 96, Encoding: "opus", ClockRate: 48000}, {Type: 101, Encoding: "telephone-event", ClockRate: 16000}}
	got := payloadTypes(in, out)
	want := []mediarelay.PayloadType{{Type: 0, Encoding: "PCMU", ClockRate: 8000}, {Type: 101, Encoding: "telephone-event", ClockRate: 8000},
		{Type: 96, Encoding: "opus", ClockRate: 48000}}
	if !slices.Equal(got, want) {
		t.Errorf("payloadTypes = %+v, want %+v (both sides', the inside's first for a number both name)", got, want)
	}
	if payloadTypes(nil, nil) != nil {
		t.Error("no rtpmap: want nil")
	}

	a := mediarelay.StreamSpec{CallID: "c", PayloadTypes: got}
	b := a
	b.PayloadTypes = slices.Clone(got)
	if !sameSpec(a, b) {
		t.Error("equal specs with payload types in different slices differ")
	}
	b.PayloadTypes[2].ClockRate = 16000
	if sameSpec(a, b) {
		t.Error("a changed clock rate goes unnoticed")
	}
	b = a
	b.Secure = true
	if sameSpec(a, b) {
		t.Error("a change to SRTP goes unnoticed")
	}
}
