package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sipcarProc is a running sipcar and a client of its admin endpoint, which it reaches from
// inside sipcar's namespace.
type sipcarProc struct {
	*proc
	ns     *netns
	client *http.Client
	admin  string // http://host:port
}

// adminAddr is where sipcar serves its admin endpoint inside its namespace (the default).
const adminAddr = "127.0.0.1:9060"

// startSipcar starts the sipcar under test inside ns with env (SIPCAR_*=value; the admin
// address, log level and drain timeout have test defaults) and waits until it is ready. On
// cleanup it stops sipcar with SIGTERM and fails the test if sipcar did not exit 0 or logged a
// data race or a panic.
func (tb *testbed) startSipcar(ns *netns, env ...string) *sipcarProc {
	tb.t.Helper()
	s := tb.launchSipcar(ns, "sipcar", env...)
	tb.t.Cleanup(func() { s.checkExit(tb.t) })
	s.waitReady(tb.t)
	return s
}

// launchSipcar starts sipcar inside ns with env over the test defaults (admin address, debug
// log, a short drain), its log under name, and returns without waiting for it.
func (tb *testbed) launchSipcar(ns *netns, name string, env ...string) *sipcarProc {
	tb.t.Helper()
	env = append([]string{
		"SIPCAR_ADMIN_ADDR=" + adminAddr,
		"SIPCAR_LOG_LEVEL=debug",
		"SIPCAR_DRAIN_TIMEOUT=1s",
	}, env...)
	p := tb.start(ns, name, procOpts{env: env}, suite.sipcar)
	return &sipcarProc{
		proc:  p,
		ns:    ns,
		admin: "http://" + adminAddr,
		client: &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{DialContext: ns.dialContext, DisableKeepAlives: true},
		},
	}
}

// waitReady waits until /readyz answers 200 (sipcar says ready once its listeners are open),
// and for the log line that says so.
func (s *sipcarProc) waitReady(t testing.TB) {
	t.Helper()
	eventually(t, 15*time.Second, "sipcar /readyz", func() (bool, string) {
		if s.exited() {
			t.Fatalf("sipcar exited at start:\n%s", s.output())
		}
		resp, err := s.client.Get(s.admin + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	s.waitOutput(t, regexp.MustCompile(`msg="sipcar relaying"`), 10*time.Second)
}

// checkExit stops sipcar and reports how it went.
func (s *sipcarProc) checkExit(t testing.TB) {
	s.stop(syscall.SIGTERM)
	code, err := s.wait(time.Second)
	out := s.output()
	switch {
	case err != nil:
		t.Errorf("sipcar: %v", err)
	case strings.Contains(out, "WARNING: DATA RACE"):
		t.Errorf("sipcar logged a data race (see its log)")
	case strings.Contains(out, "panic:"):
		t.Errorf("sipcar panicked (see its log)")
	case code != 0:
		t.Errorf("sipcar exited %d after SIGTERM; want 0", code)
	}
}

// get fetches a path of the admin endpoint.
func (s *sipcarProc) get(path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.admin+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, nil
}

// serverMap is the admin endpoint's JSON view of the server map (/servermap and /sessions
// serve the same snapshot).
type serverMap struct {
	Calls      int       `json:"calls"`
	MediaPorts portUsage `json:"media_ports"`
	Bindings   []entry   `json:"bindings"`
}

type portUsage struct {
	InUse int `json:"in_use"`
	Free  int `json:"free"`
}

// entry is one binding of the server map.
type entry struct {
	Type            string          `json:"type"`     // sip, sip-rtp, sip-rtcp
	Protocol        string          `json:"protocol"` // udp or tcp
	Transport       string          `json:"transport"`
	Faces           string          `json:"faces"`      // the side its address is on
	Address         netip.AddrPort  `json:"address"`    // sipcar's
	ForwardTo       netip.AddrPort  `json:"forward_to"` // what it stands for
	Peer            *netip.AddrPort `json:"peer"`
	CallID          string          `json:"call_id"`
	Held            bool            `json:"held"`
	LeftSeconds     *int64          `json:"left_seconds"`
	PacketsSent     uint64          `json:"packets_sent"`
	PacketsReceived uint64          `json:"packets_received"`
}

func (e entry) String() string {
	peer, left := "ANY", "never"
	if e.Peer != nil {
		peer = e.Peer.String()
	}
	if e.LeftSeconds != nil {
		left = strconv.FormatInt(*e.LeftSeconds, 10) + "s"
	}
	return fmt.Sprintf("%s/%s faces %s %v[%v] peer %s call %q held %v left %s pkts %d/%d",
		e.Type, e.Transport, e.Faces, e.Address, e.ForwardTo, peer, e.CallID, e.Held, left, e.PacketsSent, e.PacketsReceived)
}

// media returns the sip-rtp and sip-rtcp bindings.
func (m serverMap) media() []entry { return m.of("sip-rtp", "sip-rtcp") }

// of returns the bindings of the given types.
func (m serverMap) of(types ...string) []entry {
	var es []entry
	for _, e := range m.Bindings {
		for _, t := range types {
			if e.Type == t {
				es = append(es, e)
			}
		}
	}
	return es
}

func (m serverMap) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "calls %d, media ports in use %d, free %d\n", m.Calls, m.MediaPorts.InUse, m.MediaPorts.Free)
	for _, e := range m.Bindings {
		fmt.Fprintf(&b, "  %v\n", e)
	}
	return b.String()
}

// serverMap reads the server map; an error is a failed lookup, which callers polling the map
// treat as "not yet".
func (s *sipcarProc) serverMap() (serverMap, error) {
	b, err := s.get("/servermap")
	if err != nil {
		return serverMap{}, err
	}
	var m serverMap
	if err := json.Unmarshal(b, &m); err != nil {
		return serverMap{}, fmt.Errorf("decode /servermap: %w: %s", err, b)
	}
	return m, nil
}

// mustServerMap reads the server map or fails the test.
func (s *sipcarProc) mustServerMap(t testing.TB) serverMap {
	t.Helper()
	m, err := s.serverMap()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitMap polls the server map until cond holds.
func (s *sipcarProc) waitMap(t testing.TB, timeout time.Duration, what string, cond func(serverMap) bool) serverMap {
	t.Helper()
	var last serverMap
	eventually(t, timeout, what, func() (bool, string) {
		m, err := s.serverMap()
		if err != nil {
			return false, err.Error()
		}
		last = m
		return cond(m), m.String()
	})
	return last
}

// waitNoMedia waits until the server map holds no media binding (a call's end releases them
// as the final response or BYE passes, so this is quick).
func (s *sipcarProc) waitNoMedia(t testing.TB, after string) {
	t.Helper()
	s.waitMap(t, 5*time.Second, "no sip-rtp/sip-rtcp binding left after "+after, func(m serverMap) bool {
		return len(m.media()) == 0 && m.Calls == 0 && m.MediaPorts.InUse == 0
	})
}

// metrics reads the admin endpoint's Prometheus metrics: series (name and labels as printed)
// to value.
func (s *sipcarProc) metrics(t testing.TB) map[string]float64 {
	t.Helper()
	b, err := s.get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// sumMetric adds the series of a metric whose labels contain every one of labels (`code="400"`).
func sumMetric(ms map[string]float64, name string, labels ...string) float64 {
	var keys []string
	for k := range ms {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	total := 0.0
	for _, k := range keys {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(k, l) {
				ok = false
			}
		}
		if ok {
			total += ms[k]
		}
	}
	return total
}
