package rewrite

import "fmt"

// Valid reports whether s is Inside or Outside.
func (s Side) Valid() bool { return s == Inside || s == Outside }

// MarshalText writes "inside" or "outside": the sides as the server map and the policy show them.
func (s Side) MarshalText() ([]byte, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("marshal side %d: invalid", s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText parses "inside" or "outside", as MarshalText writes them.
func (s *Side) UnmarshalText(text []byte) error {
	switch string(text) {
	case "inside":
		*s = Inside
	case "outside":
		*s = Outside
	default:
		return fmt.Errorf("side %q: want inside or outside", text)
	}
	return nil
}
