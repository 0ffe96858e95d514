// Package pinhole is sipcar's server map: every binding of an address on one side to one of
// sipcar's own addresses on the other side (signaling endpoints, RTP/RTCP relay port pairs), their
// lifetimes, the relay port range they are drawn from, and the session table that shows the
// traffic each binding carried. It renders both tables as JSON and as text in the shape firewall
// vendors use ("display firewall server-map").
//
// A [Map] hands out two kinds of bindings. A sip binding ([Map.Signaling]) stands for one SIP
// endpoint per transport and lives 2 minutes after its last message, or as long as the endpoint's
// registration ([Map.Registered]). Media pairs come per call from a [Tx] that allocates all the
// pairs of one message or none; a pair stands for one side's RTP and RTCP addresses of a stream,
// lives 50 seconds until its stream's first packet and then until the stream idles for 60
// seconds (never while the stream is held), and goes with its call ([Map.ReleaseCall]) or when a
// later offer changes or drops its stream. With Config.ReserveAnswerPair the offer that starts a
// stream also reserves the pair of its answer ([Map.AnswerPair]), which the answer takes over. A
// stream answered by several early dialogs of a forked call has an answer pair per dialog
// ([MediaRequest] Fork) until a 2xx settles it ([Map.SettleFork], [Map.EndFork]).
//
// Every port is random within its range, held on the host from allocation to release by a
// [ReserveFunc] its user passes (the Map knows no sockets), and in use on one side at a time, so
// that a port alone names its binding: [Map.LookupMedia] is the media relay's lock-free
// per-packet lookup, and [Binding.Received] and [Binding.Sent] its lock-free counters. [Map.Run]
// expires bindings at their deadlines; Config.OnRelease tells the relays of every release and
// why.
//
// pinhole imports no other sipcar package. Its [Side] and [Pair] have the shapes of package
// rewrite's Side and MediaBinding, so the relay's translator converts them directly.
package pinhole
