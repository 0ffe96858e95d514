package mediarelay

import (
	"fmt"
	"net/netip"
	"strings"
)

// choosePaths finds, for every side, the interfaces its media arrives on and the receive path
// there, and returns the bridges where fan-in works. A packet that arrives on an interface that
// is not a bridge runs the prerouting hook once, where the TPROXY rule hands it to the fan-in
// socket. One that arrives through a bridge with br_netfilter on runs the hook in the bridge's
// context, where the rule matches but the socket it assigns is dropped before the packet
// reaches IP (ip_rcv orphans it, and the second pass through prerouting is skipped): the
// packet then goes to whatever socket is bound to its address and port, the relay port's own.
// Whether that happens on a bridge depends on the kernel, the bridge's own nf_call_iptables
// and the namespace's bridge-nf-call-iptables, so each bridge is probed rather than guessed:
// a packet sent into it through a temporary port (see [Relay.probeBridge]) shows which socket
// gets it.
//
// It runs in New while the table steers every interface to the fan-in sockets and before any
// worker reads them. The results are in r.paths.
func (r *Relay) choosePaths() []string {
	nl, err := openRtnl()
	if err != nil {
		for _, s := range r.cfg.Sides {
			r.paths = append(r.paths, SidePath{Side: s.Name, Path: PathPerPort, Reason: "probe-failed",
				Detail: fmt.Sprintf("cannot find the interfaces its media arrives on: %v", err)})
		}
		return nil
	}
	defer nl.close()
	probed := make(map[int]probeOutcome) // by bridge index
	var ok []string
	for _, s := range r.cfg.Sides {
		links, how, err := sideIngress(nl, s)
		if err != nil || len(links) == 0 {
			// The table's bridge rule still sends whatever comes through a bridge to the
			// ports' sockets; anything else reaches the fan-in sockets.
			r.paths = append(r.paths, SidePath{Side: s.Name, Path: PathFanIn, Reason: "not-bridged",
				Detail: fmt.Sprintf("no interface found for its media (%v): fan-in, except through bridges", err)})
			continue
		}
		for _, l := range links {
			sp := SidePath{Side: s.Name, Ingress: l.name}
			if l.kind != "bridge" {
				sp.Path, sp.Reason = PathFanIn, "not-bridged"
				sp.Detail = fmt.Sprintf("its media arrives on %s (%s), not through a bridge", l.name, how)
				r.paths = append(r.paths, sp)
				continue
			}
			o, seen := probed[l.index]
			if !seen {
				o = r.probeBridge(nl, l, probeTarget(s))
				probed[l.index] = o
				if o.path == PathFanIn {
					ok = append(ok, l.name)
				}
			}
			sp.Path, sp.Reason = o.path, o.reason
			sp.Detail = fmt.Sprintf("its media arrives through the bridge %s (%s): %s", l.name, how, o.detail)
			r.paths = append(r.paths, sp)
		}
	}
	return ok
}

// sideIngress returns the interfaces the routes to the side's peers leave by (where replies
// from them arrive), and how it found them.
func sideIngress(nl *rtnl, s Side) ([]linkInfo, string, error) {
	var idx []int
	how := ""
	add := func(i int) {
		for _, j := range idx {
			if j == i {
				return
			}
		}
		idx = append(idx, i)
	}
	var errs []string
	for _, p := range s.Peers {
		i, err := nl.routeOIF(p.Addr())
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		add(i)
		how = "the route to " + p.String()
	}
	if len(s.Peers) == 0 {
		for _, v4 := range []bool{true, false} {
			if !hasFamily(s.Addrs, v4) {
				continue
			}
			oifs, err := nl.defaultRouteOIFs(v4)
			if err != nil {
				continue // then the interfaces of its addresses
			}
			for _, i := range oifs {
				add(i)
			}
			how = "the default route"
		}
	}
	if len(idx) == 0 {
		for _, a := range s.Addrs {
			if i := nl.addrIndex(a); i != 0 {
				add(i)
				if how == "" {
					how = "the interface of " + a.String()
				}
			}
		}
	}
	var links []linkInfo
	for _, i := range idx {
		l, err := nl.link(i)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if l.name == "lo" {
			continue // local peers: nothing crosses a bridge
		}
		links = append(links, l)
	}
	if len(links) == 0 && len(errs) > 0 {
		return nil, how, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return links, how, nil
}

func hasFamily(addrs []netip.Addr, v4 bool) bool {
	for _, a := range addrs {
		if a.Unmap().Is4() == v4 {
			return true
		}
	}
	return false
}

// probeTarget is the address a probe of the side is sent to: its IPv4 address if it has one.
func probeTarget(s Side) netip.Addr {
	var v6 netip.Addr
	for _, a := range s.Addrs {
		a = a.Unmap()
		if a.Is4() {
			return a
		}
		if !v6.IsValid() {
			v6 = a
		}
	}
	return v6
}
