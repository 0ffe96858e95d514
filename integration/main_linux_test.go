package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// suite is what TestMain prepares once for every test: the sipcar binary under test and the
// prefix of this run's network namespaces. It is written only by TestMain, before any test runs.
var suite struct {
	// sipcar is the path of the binary built from ./cmd/sipcar, or "" when it could not be
	// built (buildErr says why).
	sipcar   string
	buildErr error
	// notRoot is set when the tests cannot create network namespaces.
	notRoot bool
	// prefix starts the name of every namespace of this run: "sct" and the pid, so that a
	// later run can tell a stale namespace (its pid is gone) from a live parallel run's.
	prefix string
	// labs numbers this run's testbeds.
	labs atomic.Int64
}

// namespacePrefix starts the name of every network namespace the suite creates.
const namespacePrefix = "sct"

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	suite.prefix = fmt.Sprintf("%s%d-", namespacePrefix, os.Getpid())
	if os.Geteuid() != 0 {
		suite.notRoot = true
		return m.Run()
	}
	removeStaleNamespaces(os.Stderr)
	dir, err := os.MkdirTemp("", "sipcar-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	suite.sipcar, suite.buildErr = buildSipcar(dir)
	return m.Run()
}

// buildSipcar builds ./cmd/sipcar into dir, with the race detector when the tests have it: the
// end-to-end runs then also look for data races in sipcar (see [sipcarProc.checkLog]).
func buildSipcar(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "sipcar")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/sipcar")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/sipcar: %v\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot is the directory of go.mod, one above this package.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root := filepath.Dir(wd)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	return root, nil
}

// inCI reports whether the tests run in CI, where a missing prerequisite is a failure.
func inCI() bool { return os.Getenv("CI") == "true" }

// prerequisite stops a test whose prerequisite is missing: a failure in CI, a skip elsewhere.
func prerequisite(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if inCI() {
		t.Fatalf("prerequisite missing (CI=true): %s", msg)
	}
	t.Skipf("prerequisite missing: %s", msg)
}

// needRoot stops the test unless it can build network namespaces and has a sipcar binary.
func needRoot(t testing.TB) {
	t.Helper()
	if suite.notRoot {
		prerequisite(t, "the end-to-end tests create network namespaces: run them as root")
	}
	if suite.buildErr != nil {
		t.Fatalf("sipcar did not build: %v", suite.buildErr)
	}
}

// needProgram returns the path of a program the test runs, or stops the test.
func needProgram(t testing.TB, name, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		prerequisite(t, "%s not found (Debian package %s; `make deps` installs it)", name, debianPackage)
	}
	return p
}

// firstLines returns at most n lines of s, for messages that quote a program's output.
func firstLines(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], fmt.Sprintf("... (%d more lines)\n", len(lines)-n))
	}
	return strings.Join(lines, "")
}
