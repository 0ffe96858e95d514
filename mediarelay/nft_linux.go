package mediarelay

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/sipcar/sipcar/mediarelay/sock"
)

// nftTable is the table of sipcar's own that holds the fan-in rule. It is replaced whole at
// start, so a table left behind by a crash goes away then, and deleted by Close.
const nftTable = "sipcar"

// nftSpec is what the table steers: UDP addressed to one of this host's addresses within the
// port range min-max goes to the fan-in sockets on port4 (IPv4) and port6 (IPv6); 0 leaves
// that family out. With skipBridges, packets that arrive through a bridge not named in
// fanInBridges are left alone, for the relay ports' own sockets.
type nftSpec struct {
	min, max, port4, port6 uint16
	skipBridges            bool
	fanInBridges           []string
}

// nftRules returns the nft script that replaces the table atomically (one transaction).
func nftRules(s nftSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", nftTable, nftTable)
	fmt.Fprintf(&b, "table inet %s {\n\tchain prerouting {\n", nftTable)
	b.WriteString("\t\ttype filter hook prerouting priority mangle; policy accept;\n")
	if s.skipBridges {
		// A packet coming through a bridge runs this hook with the bridge as its input
		// interface, whether or not br_netfilter is on.
		b.WriteString("\t\tmeta iifkind \"bridge\"")
		if len(s.fanInBridges) > 0 {
			quoted := make([]string, len(s.fanInBridges))
			for i, n := range s.fanInBridges {
				quoted[i] = strconv.Quote(n)
			}
			fmt.Fprintf(&b, " iifname != { %s }", strings.Join(quoted, ", "))
		}
		b.WriteString(" return\n")
	}
	if s.port4 != 0 {
		fmt.Fprintf(&b, "\t\tmeta nfproto ipv4 udp dport %d-%d fib daddr type local tproxy ip to :%d\n", s.min, s.max, s.port4)
	}
	if s.port6 != 0 {
		fmt.Fprintf(&b, "\t\tmeta nfproto ipv6 udp dport %d-%d fib daddr type local tproxy ip6 to :%d\n", s.min, s.max, s.port6)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// runNft runs an nft script (one transaction).
func runNft(script string) error {
	_, err := sock.RunNft(script, "-f", "-")
	return err
}

func installNft(s nftSpec) error {
	if err := runNft(nftRules(s)); err != nil {
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
