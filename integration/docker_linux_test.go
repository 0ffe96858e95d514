package integration

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// What the Docker tests need, from Debian's packages (docker.io, docker-compose, debootstrap;
// nsenter is util-linux's). The client is Debian's, not whatever newer one is first on PATH:
// it speaks the engine's API version and builds with the classic builder, as
// docker-compose 1.29 does.
type dockerTools struct {
	docker, dockerd, compose, debootstrap, nsenter, tar string
}

func needDockerTools(t testing.TB) dockerTools {
	t.Helper()
	tools := dockerTools{
		dockerd:     needProgram(t, "dockerd", "docker.io"),
		compose:     needProgram(t, "docker-compose", "docker-compose"),
		debootstrap: needProgram(t, "debootstrap", "debootstrap"),
		nsenter:     needProgram(t, "nsenter", "util-linux"),
		tar:         needProgram(t, "tar", "tar"),
	}
	tools.docker = "/usr/bin/docker"
	if _, err := os.Stat(tools.docker); err != nil {
		prerequisite(t, "%s not found (Debian package docker.io; `make deps` installs it)", tools.docker)
	}
	return tools
}

// testCacheDir holds what is expensive to make and can be reused between runs, keyed by what
// it is made from: the Debian base system and the images built from the repository.
func testCacheDir() string {
	if d := os.Getenv("SIPCAR_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/sipcar-test"
}

// dockerEngine is a dockerd the test started, with its state in dir, and a client of it.
type dockerEngine struct {
	name   string
	dir    string // data-root, exec-root, socket, pid file and log
	sock   string
	docker string // the client
	cmd    *exec.Cmd
	done   chan struct{} // closed when dockerd exited
}

// startEngine starts dockerd with its state under dir. netns is the network namespace it runs
// in (nsenter --net: `ip netns exec` remounts /sys and hides the cgroups dockerd needs), or ""
// for the machine's own, where flags must keep it from changing anything of the network.
func startEngine(t testing.TB, tools dockerTools, name, dir, netns string, flags ...string) *dockerEngine {
	t.Helper()
	e := &dockerEngine{name: name, dir: dir, sock: filepath.Join(dir, "docker.sock"), docker: tools.docker, done: make(chan struct{})}
	for _, d := range []string{"data", "exec"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	argv := append([]string{tools.dockerd, "--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"-H", "unix://" + e.sock, "--pidfile", filepath.Join(dir, "docker.pid")}, flags...)
	if netns != "" {
		argv = append([]string{tools.nsenter, "--net=" + netns}, argv...)
	}
	log, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	e.cmd = exec.Command(argv[0], argv[1:]...)
	e.cmd.Stdout, e.cmd.Stderr = log, log
	e.cmd.Env = cleanEnviron()
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = e.cmd.Wait()
		log.Close()
		close(e.done)
	}()
	eventually(t, 60*time.Second, name+" answering", func() (bool, string) {
		select {
		case <-e.done:
			b, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Fatalf("%s exited at start:\n%s", name, firstLines(string(b), 40))
		default:
		}
		out, err := e.command("version", "--format", "{{.Server.Version}}").CombinedOutput()
		return err == nil, string(out)
	})
	return e
}

// command returns the docker client talking to this engine.
func (e *dockerEngine) command(args ...string) *exec.Cmd {
	cmd := exec.Command(e.docker, args...)
	cmd.Env = append(cleanEnviron(), "DOCKER_HOST=unix://"+e.sock)
	return cmd
}

// run runs the client and returns its output, or fails the test.
func (e *dockerEngine) run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.command(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s (%s): %v\n%s", strings.Join(args, " "), e.name, err, firstLines(string(out), 40))
	}
	return string(out)
}

// stop stops dockerd (it stops its containers first), unmounts what it left mounted under its
// directory and removes its state there; its log stays.
func (e *dockerEngine) stop() error {
	select {
	case <-e.done:
	default:
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(45 * time.Second):
			_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
			<-e.done
		}
	}
	var errs []error
	if err := unmountUnder(e.dir); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []string{"data", "exec", "docker.sock", "docker.pid"} {
		if err := os.RemoveAll(filepath.Join(e.dir, f)); err != nil {
			errs = append(errs, fmt.Errorf("remove %s's state: %w", e.name, err))
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount point at or below dir, deepest first (the overlay mounts
// of containers, the exec root's bind mount of the network namespace).
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMountinfo undoes the octal escapes of /proc/self/mountinfo (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// composeImages are the images docker-compose.yml runs, as `docker save` archives.
type composeImages struct {
	sipcar, pbx string
}

// The tags docker-compose.yml gives its images by default, and the base images its
// Dockerfiles start from.
const (
	sipcarImage = "sipcar:latest"
	pbxImage    = "sipcar-pbx:latest"
	debianImage = "debian:bookworm-slim"
	golangImage = "golang:1.26-bookworm"
)

// buildComposeImages returns archives of the images of docker-compose.yml built from the
// repository's Dockerfiles, from the cache when what they are built from is unchanged. There
// is no registry here: the base images are made locally (debootstrap, and the machine's Go
// toolchain and CA bundle), tagged as the Dockerfiles name them, and the builds run on a
// build-only dockerd in the machine's namespace that changes nothing of its network
// (--bridge=none, no iptables, forwarding or masquerading) with the host network, so that the
// module proxy and the Debian mirror are reachable. That engine and its state are removed
// after.
func buildComposeImages(t *testing.T, tb *testbed, tools dockerTools) composeImages {
	t.Helper()
	cache := testCacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	// One run at a time prepares the cache.
	lock, err := os.OpenFile(filepath.Join(cache, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)

	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	rootfs, rootfsKey := debianRootfs(t, tb, tools, cache)
	goroot, goVersion := goToolchain(t)
	const caBundle = "/etc/ssl/certs/ca-certificates.crt"
	ca, err := os.ReadFile(caBundle)
	if err != nil {
		prerequisite(t, "the CA bundle %s (Debian package ca-certificates): %v", caBundle, err)
	}
	files, err := sourceFiles(root)
	if err != nil {
		t.Fatal(err)
	}
	ignore, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var sipcarFiles, pbxFiles []string
	for _, f := range files {
		switch {
		case strings.HasPrefix(f, "pbx/"):
			pbxFiles = append(pbxFiles, f)
		case !dockerIgnored(string(ignore), f):
			sipcarFiles = append(sipcarFiles, f)
		}
	}
	imgs := composeImages{
		sipcar: filepath.Join(cache, "image-sipcar-"+contentKey(t, root, sipcarFiles, rootfsKey, goVersion, hashBytes(ca))+".tar"),
		pbx:    filepath.Join(cache, "image-pbx-"+contentKey(t, root, pbxFiles, rootfsKey)+".tar"),
	}
	needSipcar, needPBX := !exists(imgs.sipcar), !exists(imgs.pbx)
	if !needSipcar && !needPBX {
		t.Logf("images from the cache: %s, %s", imgs.sipcar, imgs.pbx)
		return imgs
	}

	dir, err := os.MkdirTemp(cache, "build-engine-")
	if err != nil {
		t.Fatal(err)
	}
	eng := startEngine(t, tools, "build engine", dir, "",
		"--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false")
	logs := tb.workdir("docker-build")
	defer func() {
		if err := eng.stop(); err != nil {
			t.Errorf("build engine: %v", err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "dockerd.log")); err == nil {
			_ = os.WriteFile(filepath.Join(logs, "dockerd.log"), b, 0o644)
		}
		os.RemoveAll(dir)
	}()
	start := time.Now()
	importImage(t, eng, tools, debianImage, nil, "-C", rootfs, ".")
	goParent, goBase := filepath.Split(filepath.Clean(goroot))
	importImage(t, eng, tools, golangImage, []string{
		"ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"ENV GOPATH=/go", "ENV GOTOOLCHAIN=local", "WORKDIR /go",
	}, "-C", rootfs, ".",
		"-C", goParent, "--transform", `s,^`+goBase+`\($\|/\),usr/local/go\1,S`, goBase,
		"-C", "/", strings.TrimPrefix(caBundle, "/"))
	t.Logf("base images %s and %s (%s) imported in %v", debianImage, golangImage, goVersion, time.Since(start).Round(time.Second))

	build := func(tag, context, archive, log string) {
		start := time.Now()
		out, err := eng.command(append([]string{"build", "--network", "host", "-t", tag}, append(proxyBuildArgs(), context)...)...).CombinedOutput()
		_ = os.WriteFile(filepath.Join(logs, log), out, 0o644)
		if err != nil {
			t.Fatalf("docker build %s: %v (log: %s)\n%s", tag, err, log, firstLines(lastLines(string(out), 40), 40))
		}
		t.Logf("%s built in %v", tag, time.Since(start).Round(time.Second))
		tmp := archive + ".tmp"
		save := eng.command("save", "-o", tmp, tag)
		if out, err := save.CombinedOutput(); err != nil {
			t.Fatalf("docker save %s: %v: %s", tag, err, out)
		}
		// Archives of older sources are of no more use.
		old, _ := filepath.Glob(strings.TrimSuffix(archive, filepath.Base(archive)) + imageKind(archive) + "-*.tar")
		for _, o := range old {
			os.Remove(o)
		}
		if err := os.Rename(tmp, archive); err != nil {
			t.Fatal(err)
		}
	}
	if needSipcar {
		build(sipcarImage, root, imgs.sipcar, "sipcar.log")
	}
	if needPBX {
		build(pbxImage, filepath.Join(root, "pbx"), imgs.pbx, "pbx.log")
	}
	return imgs
}

// imageKind is "image-sipcar" of ".../image-sipcar-<key>.tar".
func imageKind(archive string) string {
	b := filepath.Base(archive)
	return b[:strings.LastIndexByte(b, '-')]
}

// importImage imports a tar stream of the given tar arguments as an image.
func importImage(t testing.TB, eng *dockerEngine, tools dockerTools, tag string, changes []string, tarArgs ...string) {
	t.Helper()
	tarCmd := exec.Command(tools.tar, append([]string{"-c", "--numeric-owner"}, tarArgs...)...)
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	imp := eng.command(append(args, "-", tag)...)
	pipe, err := tarCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var tarErr strings.Builder
	tarCmd.Stderr = &tarErr
	imp.Stdin = pipe
	if err := tarCmd.Start(); err != nil {
		t.Fatal(err)
	}
	out, err := imp.CombinedOutput()
	if werr := tarCmd.Wait(); werr != nil {
		t.Fatalf("tar for %s: %v: %s", tag, werr, tarErr.String())
	}
	if err != nil {
		t.Fatalf("docker import %s: %v: %s", tag, err, out)
	}
}

// proxyBuildArgs passes an HTTP proxy of the environment on to builds (Docker's predefined
// build arguments), for machines that reach the mirrors through one.
func proxyBuildArgs() []string {
	var args []string
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"} {
		if v, ok := os.LookupEnv(k); ok {
			args = append(args, "--build-arg", k+"="+v)
		}
	}
	return args
}

// debianRootfs returns a Debian 12 base system (debootstrap's minbase variant, from the mirror
// apt uses, trimmed of apt's caches and the documentation as Docker's slim image is), and the
// key it is cached under.
func debianRootfs(t *testing.T, tb *testbed, tools dockerTools, cache string) (string, string) {
	t.Helper()
	mirror := debianMirror()
	// The recipe's version: change it when what is made here changes.
	key := hashBytes([]byte("bookworm minbase v1 " + mirror))[:16]
	dir := filepath.Join(cache, "rootfs-"+key)
	if exists(filepath.Join(dir, "etc", "debian_version")) {
		return dir, key
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	start := time.Now()
	logDir := tb.workdir("debootstrap")
	out, err := exec.Command(tools.debootstrap, "--variant=minbase", "bookworm", tmp, mirror).CombinedOutput()
	_ = os.WriteFile(filepath.Join(logDir, "debootstrap.log"), out, 0o644)
	if err != nil {
		os.RemoveAll(tmp)
		t.Fatalf("debootstrap bookworm from %s: %v\n%s", mirror, err, lastLines(string(out), 30))
	}
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
		"usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*"} {
		matches, _ := filepath.Glob(filepath.Join(tmp, pattern))
		for _, m := range matches {
			if filepath.Base(m) == "lock" || filepath.Base(m) == "partial" {
				continue
			}
			if err := os.RemoveAll(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("debootstrap of bookworm (minbase) from %s took %v", mirror, time.Since(start).Round(time.Second))
	return dir, key
}

// debianMirror is the Debian mirror apt uses on this machine (deb.debian.org if it says none).
func debianMirror() string {
	for _, f := range []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fields := strings.Fields(line)
			switch {
			case len(fields) >= 2 && fields[0] == "URIs:" && strings.HasSuffix(strings.TrimSuffix(fields[1], "/"), "/debian"):
				return fields[1]
			case len(fields) >= 3 && fields[0] == "deb" && strings.HasSuffix(strings.TrimSuffix(fields[1], "/"), "/debian") && strings.HasPrefix(fields[2], "bookworm"):
				return fields[1]
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// goToolchain is the Go toolchain the tests run with, for the builder image.
func goToolchain(t testing.TB) (string, string) {
	t.Helper()
	out, err := exec.Command("go", "env", "GOROOT", "GOVERSION").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("go env GOROOT GOVERSION: %q", out)
	}
	return f[0], f[1]
}

// sourceFiles lists the repository's files as a build context sees them: tracked and new
// files, without what git ignores (build output, test binaries; .dockerignore leaves those out
// too).
func sourceFiles(root string) ([]string, error) {
	out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		return nil, fmt.Errorf("git ls-files: %w", err)
	}
	var files []string
	for _, f := range strings.Split(string(out), "\x00") {
		if f != "" && exists(filepath.Join(root, f)) {
			files = append(files, f)
		}
	}
	sort.Strings(files)
	return files, nil
}

// dockerIgnored reports whether the .dockerignore patterns leave path out of the build context,
// in the subset of their syntax the repository's file uses: a name or glob from the top of the
// context, which also covers what is below it, or one after **/, at any depth.
func dockerIgnored(patterns, path string) bool {
	for _, p := range strings.Split(patterns, "\n") {
		p = strings.TrimSuffix(strings.TrimSpace(p), "/")
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if rest, ok := strings.CutPrefix(p, "**/"); ok {
			if m, _ := filepath.Match(rest, filepath.Base(path)); m {
				return true
			}
			continue
		}
		if m, _ := filepath.Match(p, path); m || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

// contentKey hashes the files (names, modes and contents) and the extra strings.
func contentKey(t testing.TB, root string, files []string, extra ...string) string {
	t.Helper()
	h := sha256.New()
	for _, e := range extra {
		fmt.Fprintf(h, "%s\x00", e)
	}
	for _, f := range files {
		st, err := os.Lstat(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s\x00%o\x00", f, st.Mode())
		if !st.Mode().IsRegular() {
			continue
		}
		r, err := os.Open(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func hashBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// lastLines returns at most n lines from the end of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
