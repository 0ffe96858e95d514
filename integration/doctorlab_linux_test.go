package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// diagnosis is the admin endpoint's JSON view of the one-way-audio doctor's verdict on a call
// (/calls/{id}/doctor, /doctor).
type diagnosis struct {
	CallID string         `json:"call_id"`
	State  string         `json:"state"`
	Legs   []diagnosisLeg `json:"legs"`
}

// diagnosisLeg is the verdict on one party of a call.
type diagnosisLeg struct {
	Side  string   `json:"side"`
	Party string   `json:"party"`
	Cause string   `json:"cause"`
	Line  string   `json:"line"`
	Also  []string `json:"also"`
}

func (d diagnosis) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "call %s: %s\n", d.CallID, d.State)
	for _, l := range d.Legs {
		fmt.Fprintf(&b, "  %s %s: %s\n", l.Side, l.Party, l.Line)
		for _, a := range l.Also {
			fmt.Fprintf(&b, "      also: %s\n", a)
		}
	}
	return b.String()
}

// leg returns the verdict on the side's party ("inside" or "outside").
func (d diagnosis) leg(side string) diagnosisLeg {
	for _, l := range d.Legs {
		if l.Side == side {
			return l
		}
	}
	return diagnosisLeg{Side: side}
}

func (d diagnosis) ended() bool { return strings.HasPrefix(d.State, "ended") }

// diagnose asks the doctor about callID: the verdict on each call of that Call-ID (a call that
// crossed sipcar twice has two); none while sipcar knows no such call.
func (s *sipcarProc) diagnose(callID string) ([]diagnosis, error) {
	b, err := s.get("/calls/" + url.PathEscape(callID) + "/doctor")
	if err != nil {
		if strings.Contains(err.Error(), "404") {
			return nil, nil
		}
		return nil, err
	}
	var ds []diagnosis
	if err := json.Unmarshal(b, &ds); err != nil {
		return nil, fmt.Errorf("decode the doctor's verdict: %w: %s", err, b)
	}
	return ds, nil
}

// waitDiagnosis polls the doctor on callID until its one verdict satisfies cond, and returns
// that verdict.
func (s *sipcarProc) waitDiagnosis(t testing.TB, callID, what string, cond func(diagnosis) bool) diagnosis {
	t.Helper()
	var last diagnosis
	eventually(t, 20*time.Second, "the doctor on "+callID+": "+what, func() (bool, string) {
		ds, err := s.diagnose(callID)
		if err != nil {
			return false, err.Error()
		}
		if len(ds) != 1 {
			return false, fmt.Sprintf("%d verdicts: %v", len(ds), ds)
		}
		last = ds[0]
		return cond(last), last.String()
	})
	return last
}

// waitEnded waits until the doctor shows callID ended and returns its verdict: everything it
// reads is final then (the signalling, the media counters at the streams' removal).
func (s *sipcarProc) waitEnded(t testing.TB, callID string) diagnosis {
	t.Helper()
	return s.waitDiagnosis(t, callID, "the call ended", diagnosis.ended)
}

// doctorCLI runs `sipcar doctor [args]` inside sipcar's namespace, as an operator on the host
// would (the admin endpoint at its default address), and returns what it printed.
func (s *sipcarProc) doctorCLI(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", s.ns.name, suite.sipcar, "doctor"}, args...)...)
	cmd.Env = cleanEnviron()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sipcar doctor %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// checkLeg fails the test unless the side's leg names cause and its line each of evidence.
func checkLeg(t testing.TB, d diagnosis, side, cause string, evidence ...string) {
	t.Helper()
	l := d.leg(side)
	if l.Cause != cause {
		t.Errorf("the %s leg's cause is %q; want %q\n%s", side, l.Cause, cause, d)
		return
	}
	for _, e := range evidence {
		if !strings.Contains(l.Line, e) {
			t.Errorf("the %s leg's line does not say %q:\n%s", side, e, d)
		}
	}
}

// checkAlso fails the test unless one of the side's further findings names cause and each of
// evidence.
func checkAlso(t testing.TB, d diagnosis, side, cause string, evidence ...string) {
	t.Helper()
	for _, a := range d.leg(side).Also {
		if !strings.HasPrefix(a, cause+": ") {
			continue
		}
		ok := true
		for _, e := range evidence {
			ok = ok && strings.Contains(a, e)
		}
		if ok {
			return
		}
	}
	t.Errorf("the %s leg has no further finding %s naming %q:\n%s", side, cause, evidence, d)
}

// checkCLILeg fails the test unless `sipcar doctor callID` prints the call's state and, for the
// side, the leg line with its party, its cause and each of evidence.
func checkCLILeg(t testing.TB, car *sipcarProc, d diagnosis, side string, evidence ...string) {
	t.Helper()
	out := car.doctorCLI(t, d.CallID)
	t.Logf("sipcar doctor %s:\n%s", d.CallID, out)
	if !strings.HasPrefix(out, "call "+d.CallID+": "+d.State+"\n") {
		t.Errorf("sipcar doctor %s does not start with the call and its state %q:\n%s", d.CallID, d.State, out)
	}
	l := d.leg(side)
	party := l.Party
	if party == "" {
		party = "(not seen)"
	}
	re := regexp.MustCompile(`(?m)^  ` + side + ` +` + regexp.QuoteMeta(party) + `: ` + regexp.QuoteMeta(l.Cause) + `: (.*)$`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Errorf("sipcar doctor %s has no line for the %s party %s naming %s:\n%s", d.CallID, side, party, l.Cause, out)
		return
	}
	for _, e := range evidence {
		if !strings.Contains(m[1], e) {
			t.Errorf("sipcar doctor %s: the %s line does not say %q:\n%s", d.CallID, side, e, out)
		}
	}
}

// natLab is the upstream topology with the phone behind a home router of its own: a NAT
// (masquerade) between its private network and the internet, optionally with the kernel's SIP
// ALG (nf_conntrack_sip, nf_nat_sip) as home routers have it.
//
//	phone 198.18.0.130 (eth0) == lan0 198.18.0.129  home  wan0 198.51.100.20 == out0 198.51.100.1  car  in0 198.18.0.1 == eth0 198.18.0.10 pbx
//
// sipcar's inside is 198.18.0.0/25; the phone's network, 198.18.0.128/25, is private and
// unrouted: sipcar reaches it only through the home router's public address. No namespace has
// a route out of the testbed.
type natLab struct {
	*testbed
	phone, home, car, pbx *netns
}

// The addresses of the NAT topology.
var (
	natPhoneAddr = netip.MustParseAddr("198.18.0.130")
	natHomeLAN   = netip.MustParseAddr("198.18.0.129")
	natInsideNet = netip.MustParsePrefix("198.18.0.0/25")
)

func newNATLab(tb *testbed, alg bool) *natLab {
	tb.t.Helper()
	l := &natLab{testbed: tb, phone: tb.host("phone"), home: tb.host("home"), car: tb.host("car"), pbx: tb.host("pbx")}
	tb.link(end{l.home, "lan0", []string{"198.18.0.129/25"}}, end{l.phone, "eth0", []string{"198.18.0.130/25"}})
	tb.link(end{l.car, "out0", []string{"198.51.100.1/24"}}, end{l.home, "wan0", []string{"198.51.100.20/24"}})
	tb.link(end{l.car, "in0", []string{"198.18.0.1/25"}}, end{l.pbx, "eth0", []string{"198.18.0.10/25"}})
	if err := ipCmd("-n", l.phone.name, "route", "add", "default", "via", natHomeLAN.String()); err != nil {
		tb.t.Fatal(err)
	}
	if err := l.home.sysctl("net.ipv4.ip_forward=1"); err != nil {
		tb.t.Fatal(err)
	}
	helper := ""
	if alg {
		// The kernel assigns no helper by itself (NETLAB.md): the router's SIP ALG is the sip
		// helper on new UDP flows to port 5060; the empty dstnat chain registers the NAT hook its
		// expectations are translated at.
		helper = `
	ct helper sipudp {
		type "sip" protocol udp;
		l3proto ip;
	}
	chain pre {
		type filter hook prerouting priority filter; policy accept;
		ct state new udp dport 5060 ct helper set "sipudp"
	}
	chain dstnat {
		type nat hook prerouting priority dstnat; policy accept;
	}`
	}
	tb.nft(l.home, `table ip sctnat {`+helper+`
	chain srcnat {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan0" masquerade
	}
}
`)
	return l
}

// sipcarEnv is sipcar's configuration in the NAT topology (upstream mode, UDP); extra variables
// follow (and win).
func (l *natLab) sipcarEnv(extra ...string) []string {
	return append([]string{
		"SIPCAR_MODE=upstream",
		"SIPCAR_UPSTREAM=sip:198.18.0.10:5060;transport=udp",
		"SIPCAR_PUBLIC_ADDR=198.51.100.1",
		"SIPCAR_INSIDE_ADDR=198.18.0.1",
		"SIPCAR_INSIDE_NETS=" + natInsideNet.String(),
		"SIPCAR_MEDIA_MODE=fallback",
	}, extra...)
}
