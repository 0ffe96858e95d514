package mediarelay

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
)

// nftTable is the table of sipcar's own that holds the fan-in rule. It is replaced whole at
// start, so a table left behind by a crash goes away then, and deleted by Close.
const nftTable = "sipcar"

// nftRules returns the nft script that replaces the table atomically (one transaction): UDP
// addressed to one of this host's addresses within the relay port range goes to the fan-in
// sockets on port4 (IPv4) and port6 (IPv6); 0 leaves that family out.
func nftRules(min, max, port4, port6 uint16) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", nftTable, nftTable)
	fmt.Fprintf(&b, "table inet %s {\n\tchain prerouting {\n", nftTable)
	b.WriteString("\t\ttype filter hook prerouting priority mangle; policy accept;\n")
	if port4 != 0 {
		fmt.Fprintf(&b, "\t\tmeta nfproto ipv4 udp dport %d-%d fib daddr type local tproxy ip to :%d\n", min, max, port4)
	}
	if port6 != 0 {
		fmt.Fprintf(&b, "\t\tmeta nfproto ipv6 udp dport %d-%d fib daddr type local tproxy ip6 to :%d\n", min, max, port6)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

func runNft(script string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

func installNft(min, max, port4, port6 uint16) error {
	if err := runNft(nftRules(min, max, port4, port6)); err != nil {
		return fmt.Errorf("install nftables table inet %s: %w", nftTable, err)
	}
	return nil
}

func removeNft() error {
	if err := runNft(fmt.Sprintf("table inet %s\ndelete table inet %s\n", nftTable, nftTable)); err != nil {
		return fmt.Errorf("remove nftables table inet %s: %w", nftTable, err)
	}
	return nil
}
