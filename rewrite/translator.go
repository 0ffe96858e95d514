package rewrite

import "net/netip"

// Side names one of sipcar's two sides.
type Side uint8

// The two sides. The zero Side is invalid, so that a forgotten field is an error, not Inside.
const (
	Inside Side = iota + 1
	Outside
)

// Other returns the side across from s.
func (s Side) Other() Side {
	switch s {
	case Inside:
		return Outside
	case Outside:
		return Inside
	}
	return 0
}

func (s Side) String() string {
	switch s {
	case Inside:
		return "inside"
	case Outside:
		return "outside"
	}
	return "invalid side"
}

// Field says where in a message an address stands. A [Translator] uses it to tell an address
// at which the sender asks to be reached (Via, Contact, Record-Route, Path) from one that names
// where the message goes (Request-URI, Route).
type Field uint8

// Fields of a SIP message and its SDP that carry addresses. FieldNone marks edits that change
// no address (Content-Length, a removed ICE attribute, an SDP port).
const (
	FieldNone          Field = 0
	FieldRequestURI    Field = iota // the Request-URI of a request
	FieldVia                        // a Via sent-by
	FieldViaReceived                // a Via received parameter, with rport's value when it has one
	FieldViaMaddr                   // a Via maddr parameter (an address without a port)
	FieldContact                    // a Contact URI
	FieldRecordRoute                // a Record-Route URI
	FieldRoute                      // a Route URI
	FieldPath                       // a Path URI
	FieldSDPOrigin                  // the address of SDP o= (no port)
	FieldSDPConnection              // an SDP c= (or a=rtcp) address
)

var fieldNames = [...]string{
	FieldNone:          "none",
	FieldRequestURI:    "Request-URI",
	FieldVia:           "Via",
	FieldViaReceived:   "Via received",
	FieldViaMaddr:      "Via maddr",
	FieldContact:       "Contact",
	FieldRecordRoute:   "Record-Route",
	FieldRoute:         "Route",
	FieldPath:          "Path",
	FieldSDPOrigin:     "SDP o=",
	FieldSDPConnection: "SDP c=",
}

func (f Field) String() string {
	if int(f) < len(fieldNames) && fieldNames[f] != "" {
		return fieldNames[f]
	}
	return "invalid field"
}

// Addr is one address literal a message names, outside of relayed media streams.
type Addr struct {
	Field Field
	// From is the side the message came from.
	From Side
	// Transport is the transport the address is reached over, lower case ("udp", "tcp", "tls",
	// "sctp", "ws", "wss"), from the Via protocol or the URI's transport parameter and scheme;
	// empty for SDP addresses.
	Transport string
	// AddrPort is the address. Its port is 0 for fields that carry none (maddr, SDP); for a SIP
	// URI or Via without a port it is the default port of the transport (5060, or 5061 for TLS),
	// and PortImplicit is set.
	AddrPort     netip.AddrPort
	PortImplicit bool
	// Lower is set for a Via other than the top one: another hop's, which no response is sent
	// to from here.
	Lower bool
	// Written is the host and port as the message wrote them (brackets included), for URIs and
	// Vias; it is only valid during the call.
	Written []byte
}

// Direction is an SDP stream's media direction attribute.
type Direction uint8

// Media directions (RFC 3264). SendRecv is the default when the SDP names none.
const (
	SendRecv Direction = iota
	SendOnly
	RecvOnly
	Inactive
)

func (d Direction) String() string {
	switch d {
	case SendOnly:
		return "sendonly"
	case RecvOnly:
		return "recvonly"
	case Inactive:
		return "inactive"
	}
	return "sendrecv"
}

// Disposition says what the rewriter did with a media stream.
type Disposition uint8

// Stream dispositions.
const (
	// Relayed: the stream's addresses were replaced by a binding the translator gave.
	Relayed Disposition = iota + 1
	// Rejected: m= port 0; nothing to relay.
	Rejected
	// Held: c= 0.0.0.0 (or ::) as RFC 2543 holds, or a=inactive; no binding was asked for. A held
	// stream whose c= named a real address has that address translated like SDP o=. (The ICE
	// placeholder, 0.0.0.0 with port 9 and ICE or DTLS, is no hold: see Stream.Placeholder.)
	Held
	// NotRelayed: a stream over TCP (TCP/MSRP, TCP/BFCP, TCP/TLS/...), or with a multicast or
	// host-name c=, that sipcar reports but does not relay; a unicast c= address is translated
	// like SDP o=, a multicast one is left as it is.
	NotRelayed
)

func (d Disposition) String() string {
	switch d {
	case Relayed:
		return "relayed"
	case Rejected:
		return "rejected"
	case Held:
		return "held"
	case NotRelayed:
		return "not relayed"
	}
	return "invalid disposition"
}

// Stream is one SDP media description (m= line) of a message.
type Stream struct {
	// Part is the index of the SDP body the stream is in: 0 for a message whose body is SDP, the
	// index among the application/sdp parts for a multipart body.
	Part int
	// Index is the position of the m= line within its SDP body, from 0.
	Index int
	// Media is the media type of the m= line ("audio", "video", "image", "application").
	Media string
	// Proto is the transport protocol of the m= line ("RTP/AVP", "RTP/SAVP", "udptl", ...).
	Proto string
	// RTP is the address the sender wants the stream's media sent to: the c= address in force and
	// the m= port. For a Placeholder stream it is the default candidate, or, when the SDP names
	// none, the unspecified address of the c= family with port 0: the peer is not known and is
	// learned from its first packets.
	RTP netip.AddrPort
	// RTCP is where the sender wants RTCP: a=rtcp when given, else RTP's address and port + 1;
	// equal to RTP when Mux is set. For a Placeholder stream, the candidate of component 2 of the
	// default candidate's foundation, else RTP's port + 1; unspecified with port 0 like RTP.
	RTCP netip.AddrPort
	// Mux is set when the stream offers or accepts a=rtcp-mux.
	Mux bool
	// Placeholder is set when c= and m= held the ICE placeholder of a trickle-ICE or WebRTC SDP
	// (the unspecified address and port 9, with ICE attributes or a UDP/TLS or UDP/DTLS
	// transport): the real addresses are in a=candidate lines or are still to come. sipcar
	// removes ICE and anchors the stream like any other (Relayed unless a=inactive), keeping
	// a=fingerprint and a=setup, so the receiver sends to the relay rather than to 0.0.0.0:9.
	Placeholder bool
	Direction   Direction
	// Disposition is set by the rewriter; Binding is the binding written for a Relayed stream.
	Disposition Disposition
	Binding     MediaBinding
}

// RTPMap is an a=rtpmap line: "a=rtpmap:96 opus/48000/2" is {96, "opus", 48000}.
type RTPMap struct {
	Type      uint8
	Encoding  string
	ClockRate uint32
}

// MediaBinding is the address a relayed media stream is advertised at on the far side.
type MediaBinding struct {
	// RTP is sipcar's address and relay port for RTP on the side the message goes to.
	RTP netip.AddrPort
	// RTCPPort is the relay port for RTCP, conventionally RTP's port + 1.
	RTCPPort uint16
}

// Translator decides which address stands for which. The relay backs it with the server map.
//
// The rewriter calls it once for every address literal a message names (host names are left
// alone) and once for every media stream to relay. A Translator may allocate bindings as it
// answers; if [Rewrite] then fails, it returns the error without output and the caller must
// release what the translator allocated for that message, so that nothing is left half-done.
type Translator interface {
	// Translate returns the address to write in place of a. ok false leaves the text as it was
	// (an address already reachable from the far side, a third party's). When a's port is 0, only
	// the returned address is written.
	Translate(a Addr) (to netip.AddrPort, ok bool, err error)
	// Media returns the binding to advertise for a stream the sender wants relayed; from is the
	// side the message came from. It is called only for streams with a port and an address
	// (not held, not rejected, not TCP), and for Placeholder streams, whose address may be
	// unknown: s.RTP is then the unspecified address with port 0, and the binding must learn its
	// peer from the first packets it receives.
	Media(from Side, s *Stream) (MediaBinding, error)
}

// TransportTranslator is implemented by a [Translator] that converts transports (phones on TLS,
// a PBX on UDP). For every address Translate changed, the rewriter asks which transport the
// receiver reaches the new address over, and writes it: the protocol of a Via, the transport
// parameter (and sips: scheme) of a URI. An empty answer leaves the transport as written.
type TransportTranslator interface {
	TranslateTransport(a Addr, to netip.AddrPort) string
}

// WrittenTranslator is a Translator that can give, for an address it translated, the text to
// write instead of the new address and port: what the party it stands for once wrote (a
// registrar's answer lists a phone's Contact as the phone wrote it). nil writes the address.
type WrittenTranslator interface {
	TranslateWritten(a Addr, to netip.AddrPort) []byte
}

// ViaRestorer is a Translator that puts back the Vias of a response as the request's sender
// wrote them: RestoreVia gets the index of a via-parm (0: the top one, the relay's own) and the
// via-parm as the response carries it, and returns the text that replaces it whole, or nil to
// translate it as any other address.
type ViaRestorer interface {
	RestoreVia(index int, current []byte) []byte
}
