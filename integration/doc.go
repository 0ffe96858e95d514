// Package integration holds sipcar's end-to-end tests: the sipcar binary between real SIP peers
// (sipp, kamailio, Go clients for what no tool sends), in network namespaces that the tests
// create and remove. README.md describes the topology, how to run one test and where the logs
// go.
package integration
