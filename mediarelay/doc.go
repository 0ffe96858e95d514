// Package mediarelay splices RTP and RTCP between the two sides of each media binding of the
// server map: it receives in batches (recvmmsg), forwards each packet in place to the peer the
// binding names, sends in batches (sendmmsg) from the relay port of the other side, latches on
// the real source of each stream (symmetric RTP) and keeps per-stream counters.
//
// It is the data plane only. Package pinhole decides which relay ports a stream gets and how
// long they live; package relay tells this package about them:
//
//	r, _ := mediarelay.New(mediarelay.Config{PortMin: 20000, PortMax: 29999, Events: ev})
//	go r.Run(ctx)                                // workers and housekeeping; closes r on return
//	c, _ := r.Reserve("udp", relayAddr)           // pinhole's port reservation hook, per port
//	s, _ := r.AddStream(spec)                     // leg A (inside) <-> leg B (outside)
//	r.UpdateStream(s, spec)                       // the answer, a re-INVITE, hold
//	r.RemoveStream(s); c.Close()                  // BYE, CANCEL, idle: stream first, then ports
//
// # Receiving
//
// Fan-in (the fast path, with CAP_NET_ADMIN): New installs the nftables table inet sipcar,
// whose TPROXY rule steers UDP addressed to any local address within the port range to one
// transparent SO_REUSEPORT socket per worker (IP_TRANSPARENT, IP_RECVORIGDSTADDR); the
// original destination port of each packet names its endpoint in a lock-free table indexed
// by port. The table is replaced at start (so one left by a crash goes away) and removed by
// Close. Fallback (without the privilege, said once in the log): every reserved port's socket
// is read by a worker's epoll set. Both modes share everything after the receive.
//
// A packet that reaches the host through a bridge with br_netfilter on (a container's, on a
// Docker host) is steered by the rule but never reaches the fan-in socket. So the default
// mode, ModeAuto, reads the ports' own sockets beside the fan-in ones, and decides per side
// ([Side]: the inside, the public side) from a probe at start-up: for each bridge a side's
// media arrives through, it sends a packet into the bridge through a temporary veth port and
// sees which socket gets it. Bridges where it reaches fan-in keep it; the others are left out
// of the rule, and their packets go to the ports' sockets. [Relay.Paths] and the metrics say
// which path each side takes and why.
//
// # Sending
//
// Fan-in workers write the UDP header in the headroom in front of each received payload and
// send a whole batch with one sendmmsg on a raw UDP socket, each datagram naming its relay
// address as source in an IP_PKTINFO message (the payload is never copied; the kernel writes
// the IP header and routes through its route cache), or, with [SendPerPort], send runs of
// packets from each relay port's own socket.
// The benchmark (integration/bench) chose the default.
//
// # Kernel fast path
//
// With [Config.Kernel], legs latched for good are handed to the kernel (package
// mediarelay/kernel): an eBPF program on tc ingress forwards their RTP from the latched source
// and counts it, and everything else still comes here. See [KernelMode].
//
// # Latching
//
// Each relay port learns its peer (see [LatchLearn], [LatchStrict]); packets to a leg go to
// its latched source, or to its SDP address until one is learned. Packets from other sources
// are dropped and counted (RTP bleed). A leg whose peer is not known yet (an offer without
// answer) receives nothing, but its own packets are relayed as soon as they latch it: early
// media works (until the answer, only from the signalling peer's address: [LegSpec.Unanswered]).
//
// # Call quality
//
// Per leg, the relay reads the RTP header of every packet by hand (sequence number, timestamp,
// SSRC, payload type: a fraction of a full parse's cost) for loss from extended sequence
// numbers, duplicates and reordering, the payload types seen, and RFC 3550 interarrival
// jitter in each payload type's clock (the SDP's a=rtpmap, else RFC 3551's static table). It
// reads the SR or RR heading each RTCP packet with pion/rtcp: what the peer says of the media
// it receives, and the round trip between sipcar and the peer from the sender reports the
// relay forwarded to it. [LegQuality] adds an E-model R-factor and MOS. [Stream.Quality]
// returns it (also after the stream ended), [LegQuality.Report] as a HEP quality report,
// [Config.RTCP] hands each RTCP packet to a subscriber, and the [Collector] has histograms of
// MOS, jitter and loss per leg as streams end. [Config.NoQuality] turns it off.
//
// # Concurrency
//
// The packet path takes no lock that the control plane holds: the forwarding table and each
// endpoint's peer are atomic pointers to immutable values, counters are atomic or guarded by
// a per-endpoint mutex no other worker contends for. All exported methods are safe for
// concurrent use.
//
// # Platforms
//
// Fan-in, batches and raw sends are Linux's (relay_linux.go, worker_linux.go; the socket code
// itself is package sock's). Elsewhere, for development on macOS, New runs the fallback mode
// with a goroutine per relay port reading and writing through net.UDPConn (relay_other.go);
// ModeFanIn fails there and ModeAuto falls back. What happens to a packet once read
// (rxState.forward: latching, statistics, quality analysis) and the housekeeping that reports
// events are the same code on every platform.
package mediarelay
