// Command sipcar is a SIP-aware NAT relay: a userspace SIP ALG that runs as a sidecar next to a
// PBX or transparently on a NAT gateway. It is configured by SIPCAR_* environment variables;
// `sipcar -h` lists them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sipcar/sipcar/pinhole/replica"
	"github.com/sipcar/sipcar/relay"
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

func run(args, environ []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			printHelp(stdout)
			return 0
		case "show":
			return show(args[1:], environ, stdout, stderr)
		case "healthcheck":
			return healthcheck(args[1:], environ, stdout, stderr)
		case "doctor":
			return doctor(args[1:], environ, stdout, stderr)
		default:
			fmt.Fprintf(stderr, "sipcar: unknown argument %q (try sipcar -h)\n", args[0])
			return 2
		}
	}
	cfg, err := loadConfig(environ)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	level, _ := parseLevel(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(stderr, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(stderr, opts)
	}
	log := slog.New(h)
	// The container image gives the binary its capabilities as permitted only (see
	// Dockerfile): effective from here on, in every thread.
	if err := raiseCapabilities(); err != nil {
		log.Warn("capabilities not raised: fan-in, raw sends and low ports may be refused", "err", err)
	}
	log.Info("capabilities", capabilityAttrs()...)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP reloads the policy once sipcar relays; until then (a standby) it is only noted.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pol, err := cfg.policy(reg)
	if err != nil {
		fmt.Fprintln(stderr, "sipcar:", err)
		return 2
	}

	var handler switchHandler
	handler.set(http.NotFoundHandler())
	var admin *http.Server
	if cfg.AdminAddr.IsValid() {
		admin = &http.Server{Addr: cfg.AdminAddr.String(), Handler: &handler, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := admin.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin endpoint", "addr", cfg.AdminAddr, "err", err)
			}
		}()
		defer func() {
			shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = admin.Shutdown(shut)
			cancel()
		}()
	}

	// With replication, sipcar is a standby until it takes over (at once for the active role).
	var rep *replication
	var snap replica.Snapshot
	cold := false
	if cfg.ReplicaRedis != "" {
		if rep, err = startReplication(cfg, log, reg); err != nil {
			fmt.Fprintln(stderr, "sipcar:", err)
			return 2
		}
		defer rep.close()
		handler.set(standbyHandler(rep, reg))
		snap, cold, err = rep.await(ctx, cfg.ownAddrs())
		if err != nil {
			log.Info("stopped (standby)")
			return 0
		}
	}

	rc, err := cfg.relayConfig(ctx, log)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	rc.Registerer = reg
	rc.Policy = pol
	var writer *replica.Writer
	if rep != nil {
		writer = rep.client.NewWriter(snap.Term)
		rc.Replica = writer
	}
	exporter, err := cfg.hepExporter(ctx, log, reg)
	if err != nil {
		fmt.Fprintln(stderr, "sipcar:", err)
		return 2
	}
	if exporter != nil {
		rc.Capture = exporter
	}
	r, err := relay.New(rc)
	if err != nil {
		fmt.Fprintln(stderr, "sipcar:", err)
		return 1
	}
	if rep != nil && !cold {
		t0 := time.Now()
		report := r.Restore(snap.Records)
		log.Info("replica: calls restored", "calls", report.Calls, "media_streams", report.Streams, "signaling_bindings", report.Signaling,
			"failed", len(report.Failed), "took", time.Since(t0).Round(time.Microsecond))
		for k, err := range report.Failed {
			log.Warn("replica: record not restored", "record", k, "err", err)
		}
	}

	relayCtx, stopRelay := context.WithCancel(context.Background())
	defer stopRelay()
	if exporter != nil {
		// The exporter outlives the relay's last message: it stops with the relay's context,
		// after Run has returned (see below), and writes what is still queued first.
		exportDone := make(chan struct{})
		defer func() { stopRelay(); <-exportDone }()
		go func() { defer close(exportDone); _ = exporter.Run(relayCtx) }()
		log.Info("HEP export", "collector", cfg.HEPAddr.Network+"://"+net.JoinHostPort(cfg.HEPAddr.Host, strconv.Itoa(int(cfg.HEPAddr.Port))), "agent_id", cfg.HEPID)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(relayCtx) }()

	var draining atomic.Bool
	ready := func() (bool, string) {
		switch {
		case writer != nil && writer.Fenced():
			return false, "fenced: another sipcar took over"
		case r.Ready():
			return true, "ready"
		case draining.Load():
			return false, "draining"
		case rep != nil:
			// Taking over: the listeners are opening. keepalived must not move the addresses
			// away meanwhile.
			return true, "taking over"
		}
		return false, "starting"
	}
	handler.set(adminHandler(r, pol, reg, cfg.Pprof, ready))

	fenced := make(chan error, 1)
	writerDone := make(chan struct{})
	writerCtx, stopWriter := context.WithCancel(context.Background())
	defer stopWriter()
	if writer != nil {
		go func() {
			defer close(writerDone)
			if err := writer.Run(writerCtx, r); err != nil {
				fenced <- err
			}
		}()
	} else {
		close(writerDone)
	}

	for {
		select {
		case <-hup:
			// A reload that does not parse keeps the rules in force; calls are never dropped.
			if cfg.PolicyFile == "" {
				log.Info("SIGHUP: no SIPCAR_POLICY_FILE to reload")
				continue
			}
			if err := pol.ReloadFile(cfg.PolicyFile); err != nil {
				log.Error("policy reload failed; the old rules stay in force", "err", err)
				continue
			}
			log.Info("policy reloaded", "file", cfg.PolicyFile, "rules", pol.Rules().Len())
			continue
		case err := <-done:
			if err != nil {
				fmt.Fprintln(stderr, "sipcar:", err)
				return 1
			}
			return 0
		case err := <-fenced:
			// Another sipcar took these calls over: relaying them here too would make two live
			// copies. Stop at once, without draining.
			log.Error("stopping: "+err.Error(), "calls", r.ActiveCalls())
			stopRelay()
			<-done
			return 3
		case <-ctx.Done():
		}
		break
	}
	// SIGTERM: take no new calls, let the ones in progress end, then close.
	log.Info("draining", "calls", r.ActiveCalls(), "timeout", cfg.DrainTimeout)
	draining.Store(true)
	r.Drain()
	deadline := time.Now().Add(cfg.DrainTimeout)
	for r.ActiveCalls() > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	// The calls the drain ended go from Redis too: the writer writes what is pending once more,
	// and stops before the relay closes, so that what closing releases (registrations, calls the
	// drain did not end) stays in Redis for the sipcar that comes next.
	stopWriter()
	<-writerDone
	stopRelay()
	err = <-done
	if err != nil {
		fmt.Fprintln(stderr, "sipcar:", err)
		return 1
	}
	log.Info("stopped")
	return 0
}
