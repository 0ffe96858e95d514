package pinhole

import (
	"fmt"

	"github.com/sipcar/sipcar/rewrite"
)

// Side names one of sipcar's two sides: package rewrite's Side, the one type every package of
// sipcar names a side with (the zero Side is invalid).
type Side = rewrite.Side

// The two sides.
const (
	Inside  = rewrite.Inside
	Outside = rewrite.Outside
)

// Type is a binding's type, as the server map shows it.
type Type uint8

// Binding types.
const (
	TypeSIP  Type = iota + 1 // a signaling endpoint
	TypeRTP                  // the RTP port of a media pair
	TypeRTCP                 // the RTCP port of a media pair
)

var typeNames = [...]string{TypeSIP: "sip", TypeRTP: "sip-rtp", TypeRTCP: "sip-rtcp"}

func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return "invalid type"
}

// MarshalText writes "sip", "sip-rtp" or "sip-rtcp".
func (t Type) MarshalText() ([]byte, error) {
	if int(t) >= len(typeNames) || typeNames[t] == "" {
		return nil, fmt.Errorf("marshal type %d: invalid", t)
	}
	return []byte(typeNames[t]), nil
}

// Reason says why a binding was released.
type Reason uint8

// Release reasons.
const (
	ReasonLifetime     Reason = iota + 1 // a sip binding's lifetime ran out
	ReasonSetup                          // a media stream saw no packet within MediaSetup
	ReasonIdle                           // a media stream saw no packet for MediaIdle
	ReasonCallEnded                      // BYE and its 200
	ReasonCancelled                      // CANCEL of the initial INVITE
	ReasonRejected                       // a final error response to the initial INVITE
	ReasonRenegotiated                   // an offer or answer dropped or changed the stream
	ReasonForkEnded                      // another fork of the call answered, or this fork's dialog ended
	ReasonReleased                       // the owner released it ([Map.Release])
	ReasonClosed                         // the Map was closed
	reasonCount
)

var reasonNames = [...]string{
	ReasonLifetime:     "lifetime",
	ReasonSetup:        "setup",
	ReasonIdle:         "idle",
	ReasonCallEnded:    "call-ended",
	ReasonCancelled:    "cancelled",
	ReasonRejected:     "rejected",
	ReasonRenegotiated: "renegotiated",
	ReasonForkEnded:    "fork-ended",
	ReasonReleased:     "released",
	ReasonClosed:       "closed",
}

func (r Reason) String() string {
	if r < reasonCount && reasonNames[r] != "" {
		return reasonNames[r]
	}
	return "invalid reason"
}

// orReleased returns r, or ReasonReleased for a Reason that is none of the above.
func (r Reason) orReleased() Reason {
	if r == 0 || r >= reasonCount {
		return ReasonReleased
	}
	return r
}
