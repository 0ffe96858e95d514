// Command sipcar is a SIP-aware NAT relay. This build has no SIP transport yet (the relay issue
// is open); it says so and exits with a non-zero status rather than pretend to relay calls.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "sipcar: the SIP relay is not built yet (see README.md, Status); nothing to run")
	os.Exit(1)
}
