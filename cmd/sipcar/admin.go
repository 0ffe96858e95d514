package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sipcar/sipcar/relay"
	"github.com/sipcar/sipcar/relay/policy"
)

// adminHandler serves /healthz, /readyz, /metrics, /servermap, /sessions and /policy (JSON, or
// the vendors' text shape with ?format=text).
func adminHandler(r *relay.Relay, pol *policy.Policy, reg *prometheus.Registry, profiles bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.Ready() {
			http.Error(w, "not ready: starting or draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
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
	mux.HandleFunc("GET /policy", func(w http.ResponseWriter, req *http.Request) {
		s := pol.Snapshot()
		table(s.Format, w, req, s)
	})
	return mux
}

// show prints the server map or the session table of a running sipcar, read from its admin
// endpoint (SIPCAR_ADMIN_ADDR).
func show(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || (args[0] != "servermap" && args[0] != "sessions" && args[0] != "policy") {
		fmt.Fprintln(stderr, "usage: sipcar show servermap|sessions|policy")
		return 2
	}
	cfg, _ := loadConfig(environ) // only the admin address matters here
	addr := cfg.AdminAddr
	if !addr.IsValid() {
		fmt.Fprintln(stderr, "sipcar show: SIPCAR_ADMIN_ADDR is empty")
		return 2
	}
	if addr.Addr().IsUnspecified() {
		addr.AddrPort = netipLoopback(addr)
	}
	resp, err := http.Get("http://" + addr.String() + "/" + args[0] + "?format=text")
	if err != nil {
		fmt.Fprintln(stderr, "sipcar show:", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "sipcar show:", resp.Status)
		return 1
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		fmt.Fprintln(stderr, "sipcar show:", err)
		return 1
	}
	_ = os.Stdout.Sync()
	return 0
}
