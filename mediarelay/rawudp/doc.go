// Package rawudp opens send-only raw UDP sockets: one socket sends datagrams from any local
// address and port, its user writing the UDP header and naming each datagram's source address
// in a control message, while the kernel writes the IP header. sipcar's media relay sends
// every relay port's packets through one such socket per worker, and cmd/rtpload every
// endpoint's.
//
// Two things make such a socket cheap and harmless, and both live here. The kernel routes a
// socket's packets through its route cache only if the socket does not write the IP header
// itself: with IP_HDRINCL (IPPROTO_RAW), a destination on the link (the PBX on a Docker
// bridge, the phones on a gateway's LAN) is routed with FLOWI_FLAG_KNOWN_NH, a route allocated
// and freed through RCU for every packet, about a tenth of a saturated core in a profile. And
// a raw UDP socket receives a copy of every UDP datagram for its bound address, so the socket
// is bound to the loopback address, with the smallest buffer and a filter that refuses
// everything.
package rawudp
