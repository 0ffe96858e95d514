package rewrite

import (
	"errors"
	"fmt"
)

// Sentinel errors that an [*Error] matches with errors.Is, so that the relay can choose its
// answer: 400 for ErrMalformed, 505 for ErrVersion, 415 for ErrUnsupported, 403 for ErrTooMany.
var (
	ErrMalformed   = errors.New("malformed message")
	ErrVersion     = errors.New("unsupported SIP version")
	ErrUnsupported = errors.New("unsupported body")
	// ErrTooMany: well-formed, but naming more addresses than one message may (a bound on what
	// one message costs to check and rewrite, and on the bindings it makes).
	ErrTooMany = errors.New("too many addresses")
)

// Error says what is wrong with a message and where. The message was not rewritten.
type Error struct {
	// Kind is ErrMalformed, ErrVersion, ErrUnsupported or ErrTooMany.
	Kind error
	// Where names the part of the message: a header name, "start line", "SDP m=", "body".
	Where string
	// Offset is the byte offset in the message where the problem was found.
	Offset int
	// Reason says what was wrong, in words fit for a Warning header.
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s at byte %d: %s", e.Kind, e.Where, e.Offset, e.Reason)
}

// Is reports whether target is the error's kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

func malformed(where string, off int, reason string) error {
	return &Error{Kind: ErrMalformed, Where: where, Offset: off, Reason: reason}
}
