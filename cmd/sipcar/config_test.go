package main

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// Every wrong variable is named, one line each, saying what is expected.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		env  []string
		want []string
	}{
		{nil, []string{"SIPCAR_UPSTREAM: required in upstream mode", "SIPCAR_PUBLIC_ADDR: required"}},
		{[]string{"SIPCAR_MODE=bridge", "SIPCAR_PUBLIC_ADDR=203.0.113.1"}, []string{`SIPCAR_MODE: "bridge": want upstream or transparent`}},
		{[]string{"SIPCAR_UPSTREAM=http://pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1"}, []string{"SIPCAR_UPSTREAM: want a SIP URI"}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx:5060;transport=sctp", "SIPCAR_PUBLIC_ADDR=203.0.113.1"}, []string{`SIPCAR_UPSTREAM: transport "sctp"`}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113"}, []string{"SIPCAR_PUBLIC_ADDR: ParseAddr"}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_RTP_PORTS=30000-20000"}, []string{"SIPCAR_RTP_PORTS: "}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_LISTEN_UDP=5060"}, []string{"SIPCAR_LISTEN_UDP: want host:port"}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_SIGNALING_TTL=2 minutes"}, []string{"SIPCAR_SIGNALING_TTL: "}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_LISTEN_TLS=:5061"}, []string{"SIPCAR_LISTEN_TLS: needs SIPCAR_TLS_CERT"}},
		{[]string{"SIPCAR_MODE=transparent", "SIPCAR_PUBLIC_ADDR=203.0.113.1"}, []string{"SIPCAR_INSIDE_NETS: required in transparent mode"}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1,203.0.113.2"}, []string{"SIPCAR_PUBLIC_ADDR: want at most one IPv4"}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=0.0.0.0"}, []string{"SIPCAR_PUBLIC_ADDR: 0.0.0.0: want a unicast"}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_LOG_LEVEL=loud", "SIPCAR_MEDIA_MODE=x"},
			[]string{"SIPCAR_LOG_LEVEL: ", "SIPCAR_MEDIA_MODE: "}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_POLICY=permit bogus=1", "SIPCAR_POLICY_DEFAULT=maybe"},
			[]string{`SIPCAR_POLICY: policy rule 1 "permit bogus=1": bogus: unknown field`, `SIPCAR_POLICY_DEFAULT: "maybe" is not permit or deny`}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_MAX_CONTACTS=-3", "SIPCAR_RATE_PREFIX_V4=33",
			"SIPCAR_MESSAGE_TIMEOUT=0s", "SIPCAR_MAX_CONNECTIONS_PER_SOURCE=many"},
			[]string{"SIPCAR_MAX_CONTACTS: -3: want 0", "SIPCAR_RATE_PREFIX_V4: 33: want 1 to 32", "SIPCAR_MESSAGE_TIMEOUT: 0s: want a positive",
				"SIPCAR_MAX_CONNECTIONS_PER_SOURCE: "}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_REPLICA_ROLE=standby"},
			[]string{"SIPCAR_REPLICA_ROLE: a standby needs SIPCAR_REPLICA_REDIS"}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_REPLICA_ROLE=primary",
			"SIPCAR_REPLICA_REDIS=http://redis:6379", "SIPCAR_REPLICA_PREFIX={x}", "SIPCAR_REPLICA_MAX_LAG=0s"},
			[]string{`SIPCAR_REPLICA_ROLE: "primary": want active or standby`, "SIPCAR_REPLICA_REDIS: replica Redis URL",
				`SIPCAR_REPLICA_PREFIX: "{x}"`, "SIPCAR_REPLICA_MAX_LAG: 0s: want a positive"}},
		{[]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_REPLICA_REDIS=redis://s1:26379?master_name=m&bogus=1"},
			[]string{"SIPCAR_REPLICA_REDIS: replica Redis URL"}},
	}
	for _, tc := range tests {
		_, err := loadConfig(tc.env)
		if err == nil {
			t.Errorf("%v: accepted", tc.env)
			continue
		}
		lines := strings.Split(err.Error(), "\n")
		for _, w := range tc.want {
			found := false
			for _, l := range lines {
				found = found || strings.HasPrefix(l, w)
			}
			if !found {
				t.Errorf("%v: no line starting %q in\n%s", tc.env, w, err)
			}
		}
		for _, l := range lines {
			if !strings.HasPrefix(l, "SIPCAR_") {
				t.Errorf("%v: line %q does not name its variable", tc.env, l)
			}
		}
	}
	cfg, err := loadConfig([]string{"SIPCAR_UPSTREAM=sip:pbx.example:5070;transport=tcp", "SIPCAR_PUBLIC_ADDR=203.0.113.1"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream != (sipURI{Host: "pbx.example", Port: 5070, Transport: "tcp"}) || cfg.ListenUDP.Port() != 5060 || cfg.RTPPorts.First != 20000 {
		t.Errorf("parsed %+v", cfg)
	}
	cfg, err = loadConfig([]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_LISTEN_TCP="})
	if err != nil || cfg.ListenTCP.IsValid() || !cfg.ListenUDP.IsValid() {
		t.Errorf("SIPCAR_LISTEN_TCP= did not disable TCP: %+v %v", cfg.ListenTCP, err)
	}
	cfg, err = loadConfig([]string{"SIPCAR_UPSTREAM=sip:pbx", "SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_PUBLIC_BIND_ADDR=10.0.0.5",
		"SIPCAR_INSIDE_ADDR=192.168.1.10", "SIPCAR_REPLICA_ROLE=Standby",
		"SIPCAR_REPLICA_REDIS=redis://:secret@s1:26379?master_name=mymaster&addr=s2:26379"})
	if err != nil {
		t.Fatal(err)
	}
	if own := fmt.Sprint(cfg.ownAddrs()); cfg.ReplicaRole != "standby" || own != "[192.168.1.10 10.0.0.5]" || cfg.ReplicaBatch.String() != "50ms" {
		t.Errorf("replica: role %q, own addresses %s, batch %v", cfg.ReplicaRole, own, cfg.ReplicaBatch)
	}
	cfg, err = loadConfig([]string{"SIPCAR_UPSTREAM=sip:[2001:db8:a::10]:5060", "SIPCAR_PUBLIC_ADDR=203.0.113.1,2001:db8:b::1"})
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := addrs(cfg.PublicAddr); a.IPv4.String() != "203.0.113.1" || a.IPv6.String() != "2001:db8:b::1" || cfg.Upstream.Host != "2001:db8:a::10" {
		t.Errorf("dual stack parsed %+v, upstream %+v", a, cfg.Upstream)
	}
}

// The media relay is told each side's addresses and where its media comes from: the inside
// from the inside networks (by default the upstream), the public side from anywhere, at the
// local address its traffic arrives at.
func TestMediaSides(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"SIPCAR_UPSTREAM=sip:172.28.0.2:5060", "SIPCAR_INSIDE_ADDR=172.28.0.1",
			"SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_PUBLIC_BIND_ADDR=198.51.100.1"},
			"inside [172.28.0.1] from [172.28.0.2/32]; public [198.51.100.1] from []"},
		{[]string{"SIPCAR_UPSTREAM=sip:172.28.0.2:5060", "SIPCAR_INSIDE_ADDR=172.28.0.1", "SIPCAR_INSIDE_NETS=172.28.0.0/24,10.1.0.0/16",
			"SIPCAR_PUBLIC_ADDR=203.0.113.1,2001:db8:b::1", "SIPCAR_PUBLIC_BIND_ADDR=198.51.100.1,2001:db8:b::2"},
			"inside [172.28.0.1] from [172.28.0.0/24 10.1.0.0/16]; public [198.51.100.1 2001:db8:b::2] from []"},
	} {
		cfg, err := loadConfig(tc.env)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := cfg.relayConfig(t.Context(), slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range rc.Media.Sides {
			got = append(got, fmt.Sprintf("%s %v from %v", s.Name, s.Addrs, s.Peers))
		}
		if strings.Join(got, "; ") != tc.want {
			t.Errorf("%v:\n got %s\nwant %s", tc.env, strings.Join(got, "; "), tc.want)
		}
	}
}
