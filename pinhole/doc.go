// Package pinhole is sipcar's server map: every binding of an address on one side to one of
// sipcar's own addresses on the other side (signaling endpoints, RTP/RTCP relay port pairs), their
// lifetimes, the relay port range they are drawn from, and the session table that shows the
// traffic each binding carried. It renders both tables as JSON and as text in the shape firewall
// vendors use ("display firewall server-map").
package pinhole
