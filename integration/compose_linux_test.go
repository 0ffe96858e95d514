package integration

import (
	"bytes"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Docker Compose deployment: the repository's docker-compose.yml run by a real Docker engine
// (Debian's docker.io) with Debian's docker-compose 1.29, images built from the repository's
// Dockerfiles.
//
//	alice 203.0.113.10 (sipp) ==+
//	bob   203.0.113.20 (baresip) =+= br0 router 203.0.113.254 / 198.51.100.254 == pub0 198.51.100.1  host
//
// host is the Docker host: dockerd runs in its namespace (and changes it: docker0, ip_forward,
// its nft tables), sipcar's container shares its network (network_mode: host), and the pbx
// container (kamailio and rtpengine) sits on the compose network's bridge, sipcar-pbx,
// 198.18.0.0/25 (sipcar's inside address is its gateway, 198.18.0.1; the pbx is 198.18.0.10).
// docker0 gets 198.18.0.129/25. The phones are on the internet side, behind a router.

// The phones of the compose topology.
var (
	composeAlice = netip.MustParseAddr("203.0.113.10")
	composeBob   = netip.MustParseAddr("203.0.113.20")
)

// composeEnv is the testbed's .env: the quickstart's one variable, the PBX network in the
// testbed's inside range, and a drain short enough for the test but longer than a call.
const composeEnv = `SIPCAR_PUBLIC_ADDR=198.51.100.1
SIPCAR_UPSTREAM=sip:198.18.0.10:5060
SIPCAR_INSIDE_ADDR=198.18.0.1
SIPCAR_INSIDE_NETS=198.18.0.0/25
SIPCAR_DRAIN_TIMEOUT=45s
SIPCAR_STOP_GRACE_PERIOD=60s
SIPCAR_LOG_LEVEL=debug
SIPCAR_RTP_PORTS=20000-20999
PBX_SUBNET=198.18.0.0/25
PBX_GATEWAY=198.18.0.1
PBX_ADDR=198.18.0.10
`

// composeLab is the topology above, its Docker engine and compose project.
type composeLab struct {
	*testbed
	tools                      dockerTools
	host, router, alice, bob   *netns
	engine                     *dockerEngine
	project, envFile, yml, dir string
}

func newComposeLab(tb *testbed, tools dockerTools) *composeLab {
	tb.t.Helper()
	l := &composeLab{testbed: tb, tools: tools,
		host: tb.host("host"), router: tb.host("router"), alice: tb.host("alice"), bob: tb.host("bob")}
	tb.link(end{l.host, "pub0", []string{"198.51.100.1/24"}}, end{l.router, "up0", []string{"198.51.100.254/24"}})
	if err := ipCmd("-n", l.router.name, "link", "add", "br0", "type", "bridge"); err != nil {
		tb.t.Fatal(err)
	}
	if err := ipCmd("-n", l.router.name, "addr", "add", "203.0.113.254/24", "dev", "br0"); err != nil {
		tb.t.Fatal(err)
	}
	for _, ph := range []struct {
		ns   *netns
		addr netip.Addr
		port string
	}{{l.alice, composeAlice, "a0"}, {l.bob, composeBob, "b0"}} {
		tb.link(end{ph.ns, "eth0", []string{netip.PrefixFrom(ph.addr, 24).String()}}, end{l.router, ph.port, nil})
		if err := ipCmd("-n", l.router.name, "link", "set", ph.port, "master", "br0"); err != nil {
			tb.t.Fatal(err)
		}
		if err := ipCmd("-n", ph.ns.name, "route", "add", "default", "via", "203.0.113.254"); err != nil {
			tb.t.Fatal(err)
		}
	}
	if err := ipCmd("-n", l.router.name, "link", "set", "br0", "up"); err != nil {
		tb.t.Fatal(err)
	}
	if err := l.router.sysctl("net.ipv4.ip_forward=1"); err != nil {
		tb.t.Fatal(err)
	}
	// The host's default route: towards the router, which has none on (nothing leaves the
	// testbed). sipcar finds its public side by it.
	if err := ipCmd("-n", l.host.name, "route", "add", "default", "via", "198.51.100.254"); err != nil {
		tb.t.Fatal(err)
	}
	return l
}

// startEngine runs dockerd inside the host namespace, docker0 in the testbed's inside range.
// It is stopped in t.Cleanup, after compose's own cleanup (registered later, run first).
func (l *composeLab) startEngine() {
	t := l.t
	t.Helper()
	// Short: containerd's socket path under the exec root must fit a sockaddr_un.
	dir, err := os.MkdirTemp("", "sct-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	logs := l.workdir("dockerd")
	t.Cleanup(func() {
		if l.engine != nil {
			if err := l.engine.stop(); err != nil {
				t.Error(err)
			}
		}
		if b, err := os.ReadFile(filepath.Join(dir, "dockerd.log")); err == nil {
			_ = os.WriteFile(filepath.Join(logs, "dockerd.log"), b, 0o644)
		}
		os.RemoveAll(dir)
	})
	l.engine = startEngine(t, l.tools, "dockerd in "+l.host.name, dir, filepath.Join("/run/netns", l.host.name),
		"--bip=198.18.0.129/25", "--userland-proxy=false")
}

// compose runs docker-compose on the repository's docker-compose.yml with the testbed's .env.
func (l *composeLab) compose(args ...string) *exec.Cmd {
	cmd := exec.Command(l.tools.compose, append([]string{"--ansi", "never", "--env-file", l.envFile, "-f", l.yml, "-p", l.project}, args...)...)
	cmd.Dir = l.dir
	cmd.Env = append(cleanEnviron(), "DOCKER_HOST=unix://"+l.engine.sock)
	return cmd
}

func (l *composeLab) mustCompose(args ...string) string {
	l.t.Helper()
	out, err := l.compose(args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, firstLines(string(out), 60))
	}
	return string(out)
}

// container returns the id of a service's container.
func (l *composeLab) container(service string) string {
	l.t.Helper()
	out, err := l.compose("ps", "-q", service).Output()
	id := strings.TrimSpace(string(out))
	if err != nil || id == "" {
		l.t.Fatalf("no container for the service %s (%v): %q", service, err, out)
	}
	return id
}

// rootNetwork is what dockerd would change in a network namespace, for the machine's own:
// links, nftables tables and forwarding.
func rootNetwork(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	links, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(links), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			fmt.Fprintf(&b, "link %s\n", strings.TrimSuffix(f[1], ":"))
		}
	}
	tables, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		t.Fatal(err)
	}
	b.Write(tables)
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		v, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "%s %s", f, v)
	}
	return b.String()
}

// TestDockerCompose deploys docker-compose.yml as a user would, in a testbed: images built from
// the repository (cached between runs by what they are built from), `docker-compose up` with
// an .env, and two phones on the internet side, sipp (alice) and baresip (bob), registered
// through sipcar's public address with the pbx container's kamailio. It checks that
//   - sipcar's container turns healthy (its healthcheck is `sipcar healthcheck`);
//   - sipcar chose fan-in for the public side (media arrives on pub0, no bridge) and a socket
//     per port for the inside (the pbx's media crosses the compose bridge, where br_netfilter
//     keeps the fan-in socket from getting it), and media used both paths;
//   - bob calls alice, and bob's audio reaches alice and comes back (alice echoes it) through
//     sipcar, kamailio's rtpengine and sipcar again, counted on both phones' wires, byte for
//     byte; `sipcar show sessions` in the container shows the call;
//   - `docker-compose stop` during a second call: new INVITEs get 503, the call goes on to its
//     BYE, and sipcar exits 0 by itself within the grace period;
//   - `docker-compose down` leaves no container, network, network namespace, nft table or
//     interface of sipcar's behind, and the machine's own network was never touched.
//
// It is not parallel: the builds use both cores while the parallel tests wait.
func TestDockerCompose(t *testing.T) {
	tb := newTestbed(t)
	tools := needDockerTools(t)
	needProgram(t, "sipp", "sip-tester")
	baresip := needProgram(t, "baresip", "baresip-core")
	needProgram(t, "nft", "nftables")
	rootBefore := rootNetwork(t)
	t.Cleanup(func() {
		if after := rootNetwork(t); after != rootBefore {
			t.Errorf("the machine's own network changed:\nbefore:\n%s\nafter:\n%s", rootBefore, after)
		}
	})
	started := time.Now()

	imgs := buildComposeImages(t, tb, tools)
	t.Logf("images ready after %v", time.Since(started).Round(time.Second))

	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	l := newComposeLab(tb, tools)
	l.yml, l.dir = filepath.Join(root, "docker-compose.yml"), root
	l.project = strings.ReplaceAll(tb.id, "-", "")
	l.envFile = filepath.Join(l.workdir("compose"), "testbed.env")
	if err := os.WriteFile(l.envFile, []byte(composeEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	l.startEngine()
	for _, img := range []string{imgs.sipcar, imgs.pbx} {
		l.engine.run(t, "load", "-i", img)
	}
	// Registered after the engine's: runs before it, also when the test fails midway.
	t.Cleanup(func() {
		if t.Failed() {
			if out, err := l.compose("logs", "--no-color", "--tail", "200").CombinedOutput(); err == nil {
				_ = os.WriteFile(filepath.Join(l.workdir("compose"), "compose-logs.txt"), out, 0o644)
			}
		}
		_ = l.compose("down", "--timeout", "5").Run()
	})
	if out, err := l.compose("config", "-q").CombinedOutput(); err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}

	up := time.Now()
	l.mustCompose("up", "-d", "--no-build")
	sipcarID := l.container("sipcar")
	eventually(t, 90*time.Second, "sipcar's container healthy", func() (bool, string) {
		out, err := l.engine.command("inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", sipcarID).CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "running healthy", string(out)
	})
	t.Logf("up to healthy: %v", time.Since(up).Round(100*time.Millisecond))
	car := &sipcarProc{ns: l.host, admin: "http://" + adminAddr,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: l.host.dialContext, DisableKeepAlives: true}}}

	// What the container runs as, and what sipcar says it chose.
	if user := strings.TrimSpace(l.engine.run(t, "exec", sipcarID, "id", "-un")); user != "sipcar" {
		t.Errorf("sipcar's container runs as %q; want the user sipcar", user)
	}
	logs := l.engine.run(t, "logs", sipcarID)
	for _, want := range []string{"net_admin=true net_raw=true",
		`msg="mediarelay: receive path" side=inside ingress=sipcar-pbx path=per-port reason=probe-bypassed`,
		`msg="mediarelay: receive path" side=public ingress=pub0 path=fan-in reason=not-bridged`} {
		if !strings.Contains(logs, want) {
			t.Errorf("sipcar's log lacks %q:\n%s", want, firstLines(logs, 30))
		}
	}
	ms := car.metrics(t)
	for _, series := range []string{
		`sipcar_media_receive_path{ingress="pub0",path="fan-in",reason="not-bridged",side="public"}`,
		`sipcar_media_receive_path{ingress="sipcar-pbx",path="per-port",reason="probe-bypassed",side="inside"}`,
	} {
		if ms[series] != 1 {
			t.Errorf("/metrics: %s = %v; want 1", series, ms[series])
		}
	}
	if table, err := l.host.command("nft", "list", "table", "inet", "sipcar").CombinedOutput(); err != nil ||
		!strings.Contains(string(table), `meta iifkind "bridge" return`) {
		t.Errorf("sipcar's nftables table in the host (%v): want fan-in except through bridges:\n%s", err, table)
	}

	// The phones register through sipcar with kamailio.
	l.registerThroughSipcar(l.alice, composeAlice, "alice", false)
	bob := l.startBaresip(baresip, l.bob, "bob", baresipPhone{
		sipListen: hostPort(composeBob, 5060), account: "<sip:bob@198.51.100.1>;regint=300;audio_codecs=pcma",
		rtpPorts: "21000-21010", toneHz: 440,
	})
	bob.waitRegistered(t, "bob@198.51.100.1")

	// The first call: bob calls alice, who echoes what she hears.
	aliceWire := l.captureNamed(l.alice, "tcpdump-alice", "eth0", netip.AddrPortFrom(publicAddr, 9))
	bobWire := l.captureNamed(l.bob, "tcpdump-bob", "eth0", netip.AddrPortFrom(publicAddr, 9))
	alice := l.sipp(l.alice, "alice", sippOpts{scenario: "uas_media.xml", local: composeAlice.String(), echo: true})
	l.waitListening(l.alice, "udp", 5060)
	before := car.metrics(t)
	bob.command(t, "dial", "sip:alice@198.51.100.1")
	bob.waitEvent(t, "CALL_ESTABLISHED", 20*time.Second)
	// Both crossings (bob -> sipcar -> kamailio, kamailio -> sipcar -> alice) have a pair on
	// each side; the call lasts until every sip-rtp binding relayed this many packets each way
	// (50 a second): an observable state, not a time.
	const relayed = 250
	mid := car.waitMap(t, 40*time.Second, fmt.Sprintf("%d RTP packets each way through every latched sip-rtp binding", relayed), func(m serverMap) bool {
		rtp := m.of("sip-rtp")
		if len(rtp) != 4 {
			return false
		}
		for _, e := range rtp {
			if e.Peer == nil || e.PacketsSent < relayed || e.PacketsReceived < relayed {
				return false
			}
		}
		return true
	})
	t.Logf("mid-call server map:\n%v", mid)
	sessions := l.engine.run(t, "exec", sipcarID, "sipcar", "show", "sessions")
	t.Logf("sipcar show sessions (in the container):\n%s", sessions)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^sip-rtp .*--> 203\.0\.113\.20:210\d\d `), // to bob
		regexp.MustCompile(`(?m)^sip-rtp .*--> 203\.0\.113\.10:6000 `),    // to alice
		regexp.MustCompile(`(?m)^sip-rtp .*--> 198\.18\.0\.10:30\d\d\d `), // to rtpengine
	} {
		if !want.MatchString(sessions) {
			t.Errorf("sipcar show sessions has no line matching %q", want)
		}
	}
	bob.command(t, "hangup", "")
	bob.waitEvent(t, "CALL_CLOSED", 10*time.Second)
	alice.succeeded(t, 15*time.Second, 1)
	car.waitNoMedia(t, "BYE")
	after := car.metrics(t)
	fanIn := sumMetric(after, "sipcar_media_packets_received_total", `path="fan-in"`) - sumMetric(before, "sipcar_media_packets_received_total", `path="fan-in"`)
	perPort := sumMetric(after, "sipcar_media_packets_received_total", `path="per-port"`) - sumMetric(before, "sipcar_media_packets_received_total", `path="per-port"`)
	t.Logf("packets sipcar received during the call: %v by fan-in (from the phones), %v by the ports' sockets (from rtpengine, through the bridge)", fanIn, perPort)
	// Each phone's packets arrive by fan-in, rtpengine's (two streams) through the bridge.
	if fanIn < 2*relayed || perPort < 2*relayed {
		t.Errorf("packets received by fan-in %v, per port %v; want at least %d each", fanIn, perPort, 2*relayed)
	}
	if n := sumMetric(after, "sipcar_media_packets_dropped_total", `reason="bleed"`); n > 0 {
		t.Errorf("sipcar dropped %v packets as RTP bleed", n)
	}
	checkEchoedAudio(t, bobWire.stop(t), aliceWire.stop(t), relayed)

	// The second call, and `docker-compose stop` while it lasts.
	alice = l.sipp(l.alice, "alice-2", sippOpts{scenario: "uas_media.xml", local: composeAlice.String(), echo: true})
	l.waitListening(l.alice, "udp", 5060)
	bob.command(t, "dial", "sip:alice@198.51.100.1")
	bob.waitEvent(t, "CALL_ESTABLISHED", 20*time.Second)
	first := car.waitMap(t, 20*time.Second, "the second call's media both ways", composeMedia)
	stopped := time.Now()
	stop := l.compose("stop")
	stopLog, err := os.Create(filepath.Join(l.workdir("compose"), "compose-stop.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer stopLog.Close()
	stop.Stdout, stop.Stderr = stopLog, stopLog
	if err := stop.Start(); err != nil {
		t.Fatal(err)
	}
	var stopErr error // set before stopDone is closed
	stopDone := make(chan struct{})
	go func() {
		stopErr = stop.Wait()
		close(stopDone)
	}()
	// A test that fails before the stop ended does not leave it running.
	t.Cleanup(func() {
		_ = stop.Process.Kill()
		<-stopDone
	})
	eventually(t, 20*time.Second, "/readyz answering 503 once the stop began", func() (bool, string) {
		code, err := car.readyStatus()
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusServiceUnavailable, strconv.Itoa(code)
	})
	late := composeLateInvite(t, l)
	t.Logf("INVITE while sipcar drains: %s, Retry-After: %s", late.start, late.header("Retry-After"))
	if late.status() != 503 {
		t.Errorf("a new INVITE while sipcar drains was answered %q; want 503", late.start)
	}
	car.waitMap(t, 10*time.Second, "the call's media still relayed while draining", func(m serverMap) bool {
		return composeMedia(m) && received(m) > received(first)+100
	})
	bob.command(t, "hangup", "")
	bob.waitEvent(t, "CALL_CLOSED", 10*time.Second)
	alice.succeeded(t, 15*time.Second, 1)
	select {
	case <-stopDone:
		if stopErr != nil {
			t.Errorf("docker-compose stop: %v (its output is printed below)", stopErr)
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("docker-compose stop still running 90 s after it began (its output is printed below)")
	}
	state := strings.Fields(l.engine.run(t, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}", sipcarID))
	t.Logf("docker-compose stop took %v; sipcar's container: %v", time.Since(stopped).Round(100*time.Millisecond), state)
	// Exit status 0: sipcar ended by itself once the call was over, not killed (137) at the
	// end of the grace period.
	if len(state) != 3 || state[0] != "exited" || state[1] != "0" {
		t.Errorf("sipcar's container after the stop: %v; want exited with status 0", state)
	}
	logs = l.engine.run(t, "logs", sipcarID)
	// Kept for the record, printed if the test fails.
	_ = os.WriteFile(filepath.Join(l.workdir("compose"), "sipcar.log"), []byte(logs), 0o644)
	_ = os.WriteFile(filepath.Join(l.workdir("compose"), "pbx.log"), []byte(l.engine.run(t, "logs", l.container("pbx"))), 0o644)
	// The call crossed sipcar twice: two calls with media.
	for _, want := range []string{`msg=draining calls=2 `, `msg=stopped`} {
		if !strings.Contains(logs, want) {
			t.Errorf("sipcar's log lacks %q", want)
		}
	}
	if strings.Contains(logs, "panic:") {
		t.Errorf("sipcar panicked:\n%s", lastLines(logs, 40))
	}
	if table, err := l.host.command("nft", "list", "table", "inet", "sipcar").CombinedOutput(); err == nil {
		t.Errorf("sipcar's nftables table is left after it stopped:\n%s", table)
	}

	// down removes what up made.
	l.mustCompose("down")
	if out := strings.TrimSpace(l.engine.run(t, "ps", "-aq")); out != "" {
		t.Errorf("containers left after down: %s", out)
	}
	if out := strings.Fields(l.engine.run(t, "network", "ls", "--format", "{{.Name}}")); strings.Join(out, " ") != "bridge host none" {
		t.Errorf("networks after down: %v; want Docker's own only (bridge host none)", out)
	}
	// A container's namespace is unmounted when the container goes; Docker removes the empty
	// file it was mounted on within a minute. A namespace still mounted there is one left.
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	nsDir := filepath.Join(l.engine.dir, "exec", "netns")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], nsDir+"/") && f[4] != nsDir+"/default" {
			t.Errorf("a network namespace is left mounted after down: %s", f[4])
		}
	}
	links, err := l.host.command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sipcar-pbx", "sipcarprobe", "veth"} {
		if strings.Contains(string(links), name) {
			t.Errorf("an interface %s* is left in the host after down:\n%s", name, links)
		}
	}
	t.Logf("the compose test took %v (images %v of it)", time.Since(started).Round(time.Second), up.Sub(started).Round(time.Second))
}

// composeMedia is a server map condition: the four sip-rtp bindings of a call between the two
// phones (two crossings, each with a pair on either side) carried packets both ways.
func composeMedia(m serverMap) bool {
	rtp := m.of("sip-rtp")
	if len(rtp) != 4 {
		return false
	}
	for _, e := range rtp {
		if e.PacketsSent == 0 || e.PacketsReceived == 0 {
			return false
		}
	}
	return true
}

// checkEchoedAudio checks the first call's audio on the phones' wires: bob sent one RTP stream
// to sipcar, alice got it from sipcar and sent each packet back, and bob got them back from
// sipcar, byte for byte.
func checkEchoedAudio(t *testing.T, bobPkts, alicePkts []packet, min int) {
	t.Helper()
	fromSipcar := func(p packet, dst netip.Addr) bool { return p.src.Addr() == publicAddr && p.dst.Addr() == dst }
	bobSent := rtpStreams(bobPkts, func(p packet) bool { return p.src.Addr() == composeBob && p.dst.Addr() == publicAddr })
	bobGot := rtpStreams(bobPkts, func(p packet) bool { return fromSipcar(p, composeBob) })
	aliceGot := rtpStreams(alicePkts, func(p packet) bool { return fromSipcar(p, composeAlice) })
	aliceSent := rtpStreams(alicePkts, func(p packet) bool { return p.src.Addr() == composeAlice && p.dst.Addr() == publicAddr })
	if len(bobSent) != 1 {
		t.Fatalf("bob sent %d RTP streams to sipcar; want 1", len(bobSent))
	}
	for ssrc, sent := range bobSent {
		counts := []int{sent.packets}
		for _, hop := range []struct {
			what string
			got  map[uint32]*rtpStream
		}{{"reached alice", aliceGot}, {"alice echoed", aliceSent}, {"came back to bob", bobGot}} {
			s := hop.got[ssrc]
			n := 0
			if s != nil {
				n = s.packets
				for seq, p := range s.payloads {
					if !bytes.Equal(p, sent.payloads[seq]) {
						t.Errorf("bob's packet %d %s changed", seq, hop.what)
						break
					}
				}
			}
			counts = append(counts, n)
			// Lost: packets in flight at the hang-up, and what the kernel drops on a
			// loaded machine; a path that did not work loses them all.
			if n < min || 100*n < 95*sent.packets {
				t.Errorf("of bob's %d RTP packets, %d %s; want at least %d and 95%%", sent.packets, n, hop.what, min)
			}
		}
		t.Logf("bob's audio (SSRC %#x): sent %d, reached alice %d, echoed %d, back at bob %d", ssrc, counts[0], counts[1], counts[2], counts[3])
	}
}

// composeLateInvite sends a new INVITE from alice's host (another port) to sipcar and returns
// sipcar's answer.
func composeLateInvite(t *testing.T, l *composeLab) *sipMsg {
	t.Helper()
	peer := l.udpPeer(l.alice, netip.AddrPortFrom(composeAlice, 5070))
	to := netip.AddrPortFrom(publicAddr, 5060)
	from := "<sip:late@198.51.100.1>;tag=late"
	via := "Via: SIP/2.0/UDP 203.0.113.10:5070;branch=z9hG4bKlate"
	peer.send(t, to, buildSIP("INVITE sip:bob@198.51.100.1:5060 SIP/2.0", []string{
		via, "From: " + from, "To: <sip:bob@198.51.100.1>", "Call-ID: compose-late", "CSeq: 1 INVITE",
		"Contact: <sip:late@203.0.113.10:5070>", "Max-Forwards: 70", "Content-Type: application/sdp",
	}, offer(netip.AddrPortFrom(composeAlice, 7000))))
	resp := peer.recv(t, 5*time.Second, "the answer to an INVITE sent while sipcar drains", isResponse("INVITE", 0))
	peer.send(t, to, buildSIP("ACK sip:bob@198.51.100.1:5060 SIP/2.0", []string{
		via, "From: " + from, "To: " + resp.header("To"), "Call-ID: compose-late", "CSeq: 1 ACK", "Max-Forwards: 70",
	}, ""))
	return resp
}
