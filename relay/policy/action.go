package policy

import (
	"fmt"
	"strings"

	"github.com/sipcar/sipcar/rewrite"
)

// Action is what a rule does with the requests it matches.
type Action uint8

// The zero Action is not valid: a [Config] must say which default it wants.
const (
	Permit Action = iota + 1
	Deny
)

func (a Action) String() string {
	switch a {
	case Permit:
		return "permit"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// ParseAction parses "permit" or "deny" (any case), the value of SIPCAR_POLICY_DEFAULT.
func ParseAction(s string) (Action, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "permit":
		return Permit, nil
	case "deny":
		return Deny, nil
	}
	return 0, fmt.Errorf("%q is not permit or deny", s)
}

// MarshalText writes "permit" or "deny".
func (a Action) MarshalText() ([]byte, error) {
	if a != Permit && a != Deny {
		return nil, fmt.Errorf("invalid policy action %d", uint8(a))
	}
	return []byte(a.String()), nil
}

// UnmarshalText parses the action like [ParseAction], so that an Action can be a field of an
// environment configuration struct.
func (a *Action) UnmarshalText(text []byte) error {
	v, err := ParseAction(string(text))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// Side is a side of sipcar, as a destination keyword of a rule (dst=inside, dst=outside):
// package rewrite's Side. The zero Side (not known) matches neither.
type Side = rewrite.Side

// The two sides, and a side not known.
const (
	SideUnknown Side = 0
	Inside           = rewrite.Inside
	Outside          = rewrite.Outside
)
