// Package relay terminates SIP over UDP, TCP and TLS on both of sipcar's sides, asks package
// rewrite to translate each message with bindings from package pinhole, tells package mediarelay
// about the media streams a message describes, and forwards the result to its next hop over a
// flow of its own. The deployment mode (upstream or transparent) only chooses that next hop.
package relay
