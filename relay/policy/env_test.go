package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/caarlos0/env/v11"
)

// TestEnv checks that Rules and Action read straight from SIPCAR_* variables, as cmd/sipcar
// reads its configuration, and that a bad rule's error reaches the operator. env's ParseError
// does not unwrap: its Err field holds the *RuleError.
func TestEnv(t *testing.T) {
	type config struct {
		Policy  *Rules `env:"POLICY"`
		Default Action `env:"POLICY_DEFAULT"`
	}
	cfg, err := env.ParseAsWithOptions[config](env.Options{Prefix: "SIPCAR_", Environment: map[string]string{
		"SIPCAR_POLICY":         "permit src=198.18.0.0/24 method=INVITE,REGISTER; deny src=any",
		"SIPCAR_POLICY_DEFAULT": "deny",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Policy.Len() != 2 || cfg.Default != Deny {
		t.Errorf("got %d rules, default %v", cfg.Policy.Len(), cfg.Default)
	}

	_, err = env.ParseAsWithOptions[config](env.Options{Prefix: "SIPCAR_", Environment: map[string]string{
		"SIPCAR_POLICY":         "permit src=198.18.0.0/24; deny src=10.0.0.0/33",
		"SIPCAR_POLICY_DEFAULT": "allow",
	}})
	var pe env.ParseError
	var re *RuleError
	if !errors.As(err, &pe) || !errors.As(pe.Err, &re) || re.Rule != 2 || re.Field != "src" {
		t.Errorf("bad SIPCAR_POLICY: %v", err)
	}
	for _, want := range []string{`policy rule 2 "deny src=10.0.0.0/33": src: invalid CIDR "10.0.0.0/33"`, `"allow" is not permit or deny`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %s", err, want)
		}
	}
}
