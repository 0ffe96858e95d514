package relay

import "errors"

var errParserPanic = errors.New("SIP parser panicked")
