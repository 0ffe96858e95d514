package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestHealthcheck runs `sipcar healthcheck` against an admin endpoint on loopback whose
// /readyz answers as sipcar's does: 200 "ready" once listening, 503 while starting or draining.
// The exit status is the container healthcheck's verdict.
func TestHealthcheck(t *testing.T) {
	var ready atomic.Bool
	var paths atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths.Store(r.Method + " " + r.URL.Path)
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if !ready.Load() {
			http.Error(w, "not ready: starting or draining", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	check := func(env ...string) (int, string, string) {
		t.Helper()
		var out, errb bytes.Buffer
		code := run([]string{"healthcheck"}, env, &out, &errb)
		return code, out.String(), errb.String()
	}

	code, _, stderr := check("SIPCAR_ADMIN_ADDR=" + addr)
	if code != 1 || !strings.Contains(stderr, "503") {
		t.Errorf("starting: exit %d, stderr %q; want 1 and the 503", code, stderr)
	}
	if got, _ := paths.Load().(string); got != "GET /readyz" {
		t.Errorf("the healthcheck asked %q; want GET /readyz", got)
	}

	ready.Store(true)
	code, stdout, stderr := check("SIPCAR_ADMIN_ADDR=" + addr)
	if code != 0 || strings.TrimSpace(stdout) != "ready" {
		t.Errorf("ready: exit %d, stdout %q, stderr %q; want 0 and ready", code, stdout, stderr)
	}
	// A wildcard admin address (listening on every interface) is asked on loopback.
	_, port, _ := net.SplitHostPort(addr)
	if code, _, stderr := check("SIPCAR_ADMIN_ADDR=0.0.0.0:" + port); code != 0 {
		t.Errorf("wildcard admin address: exit %d (%s); want 0", code, stderr)
	}
	// The rest of the configuration does not matter: a healthcheck is not a start.
	if code, _, stderr := check("SIPCAR_ADMIN_ADDR="+addr, "SIPCAR_MODE=nonsense"); code != 0 {
		t.Errorf("with an unrelated bad variable: exit %d (%s); want 0", code, stderr)
	}

	ready.Store(false) // draining
	if code, _, _ := check("SIPCAR_ADMIN_ADDR=" + addr); code != 1 {
		t.Errorf("draining: exit %d; want 1", code)
	}

	srv.Close()
	if code, _, stderr := check("SIPCAR_ADMIN_ADDR=" + addr); code != 1 || !strings.Contains(stderr, "not ready") {
		t.Errorf("no instance: exit %d, stderr %q; want 1", code, stderr)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"healthcheck", "now"}, nil, &out, &errb); code != 2 {
		t.Errorf("healthcheck with an argument: exit %d; want 2 (usage)", code)
	}
}
