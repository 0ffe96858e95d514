package pinhole

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPortRangeUnmarshalText(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    PortRange
		wantErr string
	}{
		{in: "20000-29999", want: PortRange{20000, 29999}},
		{in: " 3334 - 3337 ", want: PortRange{3334, 3337}},
		{in: "5060", want: PortRange{5060, 5060}},
		{in: "29999-20000", wantErr: "want 1 <= first <= last"},
		{in: "0-10", wantErr: "want 1 <= first <= last"},
		{in: "20000-70000", wantErr: "last port"},
		{in: "a-b", wantErr: "first port"},
		{in: "", wantErr: "first port"},
	} {
		var got PortRange
		err := got.UnmarshalText([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("UnmarshalText(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if text, _ := got.MarshalText(); tc.in == "20000-29999" && string(text) != tc.in {
			t.Errorf("MarshalText = %q, want %q", text, tc.in)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	v4 := Addrs{IPv4: netip.MustParseAddr("198.18.0.1")}
	pub := Addrs{IPv4: netip.MustParseAddr("198.51.100.1")}
	hold := newFakeReserve(t).reserve
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no inside address", Config{Public: pub}, "inside address: no address"},
		{"no public address", Config{Inside: v4}, "public address: no address"},
		{"v6 in the v4 slot", Config{Inside: Addrs{IPv4: netip.MustParseAddr("2001:db8::1")}, Public: pub}, "is not IPv4"},
		{"v4 in the v6 slot", Config{Inside: v4, Public: Addrs{IPv6: netip.MustParseAddr("198.51.100.1")}}, "is not IPv6"},
		{"overlapping ranges", Config{Inside: v4, Public: pub, MediaPorts: PortRange{20000, 30000}, SignalingPorts: PortRange{29000, 31000}}, "overlap"},
		{"media range without a pair", Config{Inside: v4, Public: pub, MediaPorts: PortRange{20001, 20001}}, "no even/odd pair"},
		{"negative lifetime", Config{Inside: v4, Public: pub, MediaIdle: -1}, "media idle -1ns: negative"},
		{"negative call cap", Config{Inside: v4, Public: pub, MaxCalls: -1}, "max calls -1: negative"},
		{"no media reservation", Config{Inside: v4, Public: pub, ReserveSignaling: hold}, "reserve media: no ReserveFunc"},
		{"no signaling reservation", Config{Inside: v4, Public: pub, ReserveMedia: hold}, "reserve signaling: no ReserveFunc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	m, _ := newTestMap(t, Config{})
	c := m.cfg
	if c.MediaPorts != (PortRange{20000, 29999}) || c.SignalingPorts != (PortRange{40000, 49999}) {
		t.Errorf("ranges = %v, %v", c.MediaPorts, c.SignalingPorts)
	}
	if c.SignalingLifetime.Seconds() != 120 || c.MediaSetup.Seconds() != 50 || c.MediaIdle.Seconds() != 60 {
		t.Errorf("lifetimes = %v, %v, %v", c.SignalingLifetime, c.MediaSetup, c.MediaIdle)
	}
	if got := m.Snapshot().MediaPorts; got.Free != 10000 || got.InUse != 0 {
		t.Errorf("media ports = %+v, want 10000 free", got)
	}
}
