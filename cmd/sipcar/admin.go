package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sipcar/sipcar/relay"
	"github.com/sipcar/sipcar/relay/policy"
)

// adminHandler serves /healthz, /readyz (as ready says), /metrics, /servermap, /sessions and
// /policy (JSON, or the vendors' text shape with ?format=text).
func adminHandler(r *relay.Relay, pol *policy.Policy, reg *prometheus.Registry, profiles bool, ready func() (bool, string)) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := ready(); !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("POST /takeover", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "takeover refused: this sipcar is the active one", http.StatusConflict)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if profiles {
		// Profiles for operators chasing a hot spot, when asked for (SIPCAR_PPROF): a profile
		// costs CPU and shows internals, so an admin endpoint reachable by others must not serve
		// them by default.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/heap", pprof.Handler("heap").ServeHTTP)
		mux.HandleFunc("GET /debug/pprof/goroutine", pprof.Handler("goroutine").ServeHTTP)
	}
	table := func(text func(io.Writer) error, w http.ResponseWriter, req *http.Request, v any) {
		if req.URL.Query().Get("format") == "text" {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_ = text(w)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
	mux.HandleFunc("GET /servermap", func(w http.ResponseWriter, req *http.Request) {
		s := r.Map().Snapshot()
		table(s.WriteServerMap, w, req, s)
	})
	mux.HandleFunc("GET /sessions", func(w http.ResponseWriter, req *http.Request) {
		s := r.Map().Snapshot()
		table(s.WriteSessionTable, w, req, s)
	})
	// The one-way-audio doctor: one call by its Call-ID, or every call in progress or ended in
	// the last hour.
	mux.HandleFunc("GET /calls/{id}/doctor", func(w http.ResponseWriter, req *http.Request) {
		ds := r.Diagnose(req.PathValue("id"))
		if len(ds) == 0 {
			http.Error(w, "no call "+req.PathValue("id")+" in progress or ended in the last hour", http.StatusNotFound)
			return
		}
		table(diagnoses(ds).WriteText, w, req, ds)
	})
	mux.HandleFunc("GET /doctor", func(w http.ResponseWriter, req *http.Request) {
		ds := r.DiagnoseRecent()
		table(diagnoses(ds).WriteText, w, req, ds)
	})
	mux.HandleFunc("GET /policy", func(w http.ResponseWriter, req *http.Request) {
		s := pol.Snapshot()
		table(s.Format, w, req, s)
	})
	return mux
}

// diagnoses prints as `sipcar doctor` does.
type diagnoses []relay.Diagnosis

func (ds diagnoses) WriteText(w io.Writer) error {
	if len(ds) == 0 {
		_, err := fmt.Fprintln(w, "no call in progress or ended in the last hour")
		return err
	}
	for _, d := range ds {
		if err := d.WriteText(w); err != nil {
			return err
		}
	}
	return nil
}

// doctor prints the one-way-audio doctor's verdict on a call (by Call-ID) or on every call in
// progress or ended in the last hour, from a running sipcar's admin endpoint.
func doctor(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) > 1 {
		fmt.Fprintln(stderr, "usage: sipcar doctor [Call-ID]")
		return 2
	}
	path := "/doctor"
	if len(args) == 1 {
		path = "/calls/" + url.PathEscape(args[0]) + "/doctor"
	}
	return fetchText(path, "sipcar doctor", environ, stdout, stderr)
}

// show prints the server map or the session table of a running sipcar, read from its admin
// endpoint (SIPCAR_ADMIN_ADDR).
func show(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || (args[0] != "servermap" && args[0] != "sessions" && args[0] != "policy") {
		fmt.Fprintln(stderr, "usage: sipcar show servermap|sessions|policy")
		return 2
	}
	return fetchText("/"+args[0], "sipcar show", environ, stdout, stderr)
}

// fetchText copies the text form of an admin endpoint's path to stdout.
func fetchText(path, what string, environ []string, stdout, stderr io.Writer) int {
	base, err := adminURL(environ)
	if err != nil {
		fmt.Fprintln(stderr, what+":", err)
		return 2
	}
	resp, err := http.Get(base + path + "?format=text")
	if err != nil {
		fmt.Fprintln(stderr, what+":", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		fmt.Fprintln(stderr, what+":", resp.Status+":", strings.TrimSpace(string(body)))
		return 1
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		fmt.Fprintln(stderr, what+":", err)
		return 1
	}
	_ = os.Stdout.Sync()
	return 0
}

// healthTimeout bounds the health check's request: a container healthcheck that hangs counts
// as failed only at Docker's own timeout.
const healthTimeout = 3 * time.Second

// healthcheck asks a running sipcar's admin endpoint (SIPCAR_ADMIN_ADDR) whether it is ready:
// exit status 0 when /readyz answers 200, 1 when it answers anything else (starting, draining)
// or nothing, 2 when there is no admin endpoint to ask. It is the container image's
// healthcheck, which has no curl.
func healthcheck(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) != 0 {
		fmt.Fprintln(stderr, "usage: sipcar healthcheck")
		return 2
	}
	base, err := adminURL(environ)
	if err != nil {
		fmt.Fprintln(stderr, "sipcar healthcheck:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	if err != nil {
		fmt.Fprintln(stderr, "sipcar healthcheck:", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "sipcar healthcheck: not ready:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "sipcar healthcheck: not ready: %s: %s\n", resp.Status, strings.TrimSpace(string(body)))
		return 1
	}
	fmt.Fprintln(stdout, strings.TrimSpace(string(body)))
	return 0
}

// adminURL is the base URL of the admin endpoint of the sipcar configured by environ; a
// wildcard listen address is reached on loopback.
func adminURL(environ []string) (string, error) {
	cfg, _ := loadConfig(environ) // only the admin address matters here
	addr := cfg.AdminAddr
	if !addr.IsValid() {
		return "", errors.New("SIPCAR_ADMIN_ADDR is empty: no admin endpoint to ask")
	}
	if addr.Addr().IsUnspecified() {
		addr.AddrPort = netipLoopback(addr)
	}
	return "http://" + addr.String(), nil
}
