package main

import (
	"os"
	"reflect"
	"regexp"
	"testing"
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
