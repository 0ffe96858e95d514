// Package rewrite is NAT applied to SIP and SDP: given a message as it was received and the side
// it came from, it replaces every address the message names with the address its receiver must
// see, and leaves every other byte as it was.
//
// It is pure: no sockets, no clocks, no state. Which address stands for which is decided by a
// [Translator], which the relay backs with the server map of package pinhole. The rewriter finds
// addresses by scanning the original bytes (never by re-serializing a parsed message, which would
// expand compact headers, split Via lists and unfold lines), splices the replacements in,
// recomputes Content-Length, and reports every edit it made so that a caller (or a test) can see
// and undo exactly what changed.
package rewrite
