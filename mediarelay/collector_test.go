package mediarelay

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The collector reports what the relay counts.
func TestCollector(t *testing.T) {
	isolate(t)
	r, err := New(Config{PortMin: 41000, PortMax: 41099, Mode: ModeFallback})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(r)); err != nil {
		t.Fatal(err)
	}
	r.counters[0].queued.Add(7)
	r.counters[0].drops[dropBleed].Add(3)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			if len(m.GetLabel()) > 0 {
				name += "/" + m.GetLabel()[0].GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				got[name] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[name] = m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{
		"sipcar_media_packets_forwarded_total":       7,
		"sipcar_media_packets_dropped_total/bleed":   3,
		"sipcar_media_packets_dropped_total/no_peer": 0,
		"sipcar_media_streams":                       0,
		// The kernel path is off (KernelOff): nothing goes there.
		"sipcar_media_kernel_path/off":                0,
		"sipcar_media_path_streams/kernel":            0,
		"sipcar_media_kernel_packets_forwarded_total": 0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}
