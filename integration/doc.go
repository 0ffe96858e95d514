// Package integration holds sipcar's end-to-end tests: real SIP peers (sipp, kamailio, baresip)
// and the kernel's own SIP ALG, run in network namespaces that the tests create and remove.
package integration
