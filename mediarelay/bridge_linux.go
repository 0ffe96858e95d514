package mediarelay

import (
	"net"
	"os"
	"strings"
)

// bridgedNetfilter reports why fan-in cannot see some of the relay's packets, or "": with
// br_netfilter on (net.bridge.bridge-nf-call-iptables = 1, as Docker sets it), packets that
// reach this host through a bridge run the inet prerouting hook in the bridge's context, where
// the TPROXY rule matches but the socket it assigns is lost: they never reach the fan-in socket
// (seen with a phone on a bridge in front of sipcar). Per-port sockets receive them.
func bridgedNetfilter() string {
	b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables")
	if err != nil || strings.TrimSpace(string(b)) != "1" {
		return ""
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, i := range ifs {
		if _, err := os.Stat("/sys/class/net/" + i.Name + "/bridge"); err == nil {
			return "bridge " + i.Name + " with br_netfilter on (net.bridge.bridge-nf-call-iptables = 1)"
		}
	}
	return ""
}
