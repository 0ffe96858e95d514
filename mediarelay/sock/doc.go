// Package sock holds sipcar's socket code: the options of transparent mode, the original
// destination of intercepted packets and connections, batched IO, the raw UDP sender's
// header, checksum and socket, socket buffers, port reservations and the nft runner. The SIP
// transport (package relay), the media relay (package mediarelay) and cmd/rtpload use it; it
// knows nothing of them.
//
// Platform code is split by file: Linux has everything; elsewhere the transparent-mode
// functions and [RunNft] return an error wrapping errors.ErrUnsupported, and the
// descriptor-level functions (batched IO, raw and fan-in sockets) do not exist, so code that
// needs them is Linux code too.
//
// # Transparent mode
//
// IP_TRANSPARENT lets a socket receive what an nftables TPROXY rule steers to it and send from
// addresses that are not the host's (a phone sees replies from the server it addressed);
// IP_RECVORIGDSTADDR makes the kernel say, per datagram, where it was going ([OrigDst]);
// SO_ORIGINAL_DST says where a REDIRECTed TCP connection was going ([OriginalDst]).
//
// # Raw UDP sends
//
// One raw UDP socket ([OpenRaw]) sends datagrams from any local address and port: its user
// writes the UDP header in front of the payload ([PutUDPHeader]) and names each datagram's
// source address in a control message ([Source]); the kernel writes the IP header. Two things
// make such a socket cheap and harmless. The kernel routes a socket's packets through its
// route cache only if the socket does not write the IP header itself: with IP_HDRINCL
// (IPPROTO_RAW), a destination on the link (the PBX on a Docker bridge, the phones on a
// gateway's LAN) is routed with FLOWI_FLAG_KNOWN_NH, a route allocated and freed through RCU
// for every packet, about a tenth of a saturated core in a profile. And a raw UDP socket
// receives a copy of every UDP datagram for its bound address, so the socket is bound to the
// loopback address, with the smallest buffer and a filter that refuses everything.
//
// # Ownership
//
// Every function that opens a socket hands it to the caller, who closes it: a descriptor
// (int) with unix.Close, a *net.UDPConn or net.Listener with Close. Functions that take
// buffers (control messages, message headers, datagrams) read or write them during the call
// only and keep no reference. Nothing here holds state between calls; all functions are safe
// for concurrent use.
package sock
