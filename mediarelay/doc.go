// Package mediarelay splices RTP and RTCP between the two sides of each media binding of the
// server map: it receives in batches (recvmmsg), forwards each packet in place to the peer the
// binding names, sends in batches (sendmmsg) from the relay port of the other side, latches on
// the real source of each stream (symmetric RTP) and keeps per-stream counters.
package mediarelay
