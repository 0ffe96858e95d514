package main

import (
	"os"
	"reflect"
	"regexp"
	"testing"

	"github.com/sipcar/sipcar/relay"
)

// The deployment files name every variable sipcar reads: docker-compose.yml passes each one on
// to the container, and .env.example says what each one is. A variable added to config and
// forgotten there fails here.
func TestDeploymentNamesEveryVariable(t *testing.T) {
	compose, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("../../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[config]()
	for i := range typ.NumField() {
		name := envPrefix + typ.Field(i).Tag.Get("env")
		if !regexp.MustCompile(`(?m)^      ` + name + `:`).Match(compose) {
			t.Errorf("docker-compose.yml does not pass %s to the sipcar service", name)
		}
		if !regexp.MustCompile(`(?m)^(# )?` + name + `=`).Match(example) {
			t.Errorf(".env.example does not describe %s", name)
		}
	}
	// Compose v2 and docker-compose 1.29 alike: no version key, and the relay ports are not
	// published (network_mode: host).
	for _, bad := range []string{`(?m)^version:`, `(?m)^\s+ports:`} {
		if regexp.MustCompile(bad).Match(compose) {
			t.Errorf("docker-compose.yml matches %q", bad)
		}
	}
}

// docker-compose 1.29 hands a variable the compose file passes on but nobody set to the
// container as its bare name, without "=": sipcar takes it as unset, with its default (an empty
// SIPCAR_LISTEN_UDP= would disable the UDP listener).
func TestBareVariableIsUnset(t *testing.T) {
	cfg, err := loadConfig([]string{"SIPCAR_PUBLIC_ADDR=203.0.113.1", "SIPCAR_UPSTREAM=sip:172.28.0.2:5060",
		"SIPCAR_LISTEN_UDP", "SIPCAR_MODE", "SIPCAR_RTP_PORTS", "SIPCAR_ADMIN_ADDR"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenUDP != defaultListen || cfg.Mode != relay.Upstream || cfg.RTPPorts.First != 20000 || cfg.AdminAddr.String() != "127.0.0.1:9060" {
		t.Errorf("bare names: listen %v, mode %q, RTP ports %v, admin %v; want the defaults", cfg.ListenUDP, cfg.Mode, cfg.RTPPorts, cfg.AdminAddr)
	}
}
