package mediarelay

import "strings"

// PayloadType is an RTP payload type as the SDP names it (a=rtpmap): its clock rate times
// the jitter of the packets that carry it, and its encoding chooses the codec impairment of
// the MOS estimate ([LegQuality]).
type PayloadType struct {
	Type      uint8  // 0-127
	Encoding  string // "PCMU", "opus", "telephone-event" ...
	ClockRate uint32 // Hz; 0: the static table's, else StreamSpec.ClockRate
}

// Flags kept in the high bits of a payloadTable clock entry; the low 24 bits are the rate.
const (
	// ptUntimed: packets of this type do not feed the jitter estimate. An RFC 4733 event
	// repeats its start timestamp in every packet of the event, which would read as jitter.
	ptUntimed = 1 << 31
	// ptNotCodec: not the call's codec (events, comfort noise), so it does not choose the
	// codec impairment.
	ptNotCodec = 1 << 30
	ptRateMask = 1<<24 - 1
)

// payloadTable is a stream's view of its payload types, immutable once built (a change
// installs a new one), read per packet without locks.
type payloadTable struct {
	clock [128]uint32 // rate | flags, by payload type
	types []PayloadType
	rate  uint32 // of payload types nothing names
}

// staticPayloads are RFC 3551's static payload types (table 4 and 5): encoding and clock.
var staticPayloads = [35]struct {
	name string
	rate uint32
}{
	0: {"PCMU", 8000}, 3: {"GSM", 8000}, 4: {"G723", 8000}, 5: {"DVI4", 8000}, 6: {"DVI4", 16000},
	7: {"LPC", 8000}, 8: {"PCMA", 8000}, 9: {"G722", 8000}, 10: {"L16", 44100}, 11: {"L16", 44100},
	12: {"QCELP", 8000}, 13: {"CN", 8000}, 14: {"MPA", 90000}, 15: {"G728", 8000}, 16: {"DVI4", 11025},
	17: {"DVI4", 22050}, 18: {"G729", 8000}, 25: {"CelB", 90000}, 26: {"JPEG", 90000}, 28: {"nv", 90000},
	31: {"H261", 90000}, 32: {"MPV", 90000}, 33: {"MP2T", 90000}, 34: {"H263", 90000},
}

// staticClock is the clock entry of each static payload type RFC 3551 assigns (0: none). The
// per-packet path takes it from here, not from the stream's table: a call in G.711 reads no
// table of its own. An a=rtpmap cannot change a static payload type's clock (RFC 3551 fixes
// it).
var staticClock = func() (c [len(staticPayloads)]uint32) {
	for pt, p := range staticPayloads {
		c[pt] = p.rate
	}
	c[13] |= ptNotCodec
	return c
}()

// newPayloadTable builds the table of a stream whose unnamed dynamic payload types run at
// rate Hz.
func newPayloadTable(types []PayloadType, rate uint32) *payloadTable {
	t := &payloadTable{types: types, rate: rate}
	for pt := range t.clock {
		t.clock[pt] = rate
		if pt < len(staticPayloads) && staticPayloads[pt].rate != 0 {
			t.clock[pt] = staticPayloads[pt].rate
		}
	}
	t.clock[13] |= ptNotCodec
	for _, p := range types {
		if p.Type > 127 || (int(p.Type) < len(staticClock) && staticClock[p.Type] != 0) {
			continue
		}
		c := t.clock[p.Type] & ptRateMask
		if p.ClockRate != 0 {
			c = min(p.ClockRate, ptRateMask)
		}
		switch {
		case strings.EqualFold(p.Encoding, "telephone-event"):
			c |= ptUntimed | ptNotCodec
		case strings.EqualFold(p.Encoding, "CN"):
			c |= ptNotCodec
		}
		t.clock[p.Type] = c
	}
	return t
}

// encoding names payload type pt: the SDP's name, else the static one, else "".
func (t *payloadTable) encoding(pt uint8) string {
	for _, p := range t.types {
		if p.Type == pt {
			return p.Encoding
		}
	}
	if int(pt) < len(staticPayloads) {
		return staticPayloads[pt].name
	}
	return ""
}

// PayloadTypeSet is a set of RTP payload types (0-127).
type PayloadTypeSet [2]uint64

func (s *PayloadTypeSet) add(pt uint8) { s[pt>>6&1] |= 1 << (pt & 63) }

// Has reports whether pt is in the set.
func (s PayloadTypeSet) Has(pt uint8) bool { return pt < 128 && s[pt>>6]&(1<<(pt&63)) != 0 }

// List returns the payload types in the set, in increasing order.
func (s PayloadTypeSet) List() []uint8 {
	var out []uint8
	for pt := range uint8(128) {
		if s.Has(pt) {
			out = append(out, pt)
		}
	}
	return out
}
