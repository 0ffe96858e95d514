package hep

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures an [Exporter].
type Config struct {
	// Collector is where HEP goes, over Network ("udp" or "tcp").
	Collector netip.AddrPort
	Network   string
	// AgentID is the capture agent ID (SIPCAR_HEP_ID); AuthKey the collector's password, sent
	// in every packet when set.
	AgentID uint32
	AuthKey string
	// Queue is how many packets may wait for the writer (default 4096); past it they are dropped
	// and counted.
	Queue      int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Exporter sends captured packets to a HEP collector. Its methods are safe for concurrent use;
// [Exporter.Send] never blocks.
type Exporter struct {
	cfg   Config
	log   *slog.Logger
	queue chan *[]byte
	bufs  sync.Pool

	packets *prometheus.CounterVec // by result: sent, dropped (queue full), failed (write error)
}

// New returns an exporter for cfg; it sends nothing until [Exporter.Run].
func New(cfg Config) (*Exporter, error) {
	if !cfg.Collector.IsValid() {
		return nil, errors.New("hep: no collector address")
	}
	if cfg.Network == "" {
		cfg.Network = "udp"
	}
	if cfg.Network != "udp" && cfg.Network != "tcp" {
		return nil, fmt.Errorf("hep: transport %q: want udp or tcp", cfg.Network)
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Exporter{cfg: cfg, log: cfg.Logger, queue: make(chan *[]byte, cfg.Queue),
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sipcar", Subsystem: "hep", Name: "packets_total",
			Help: "HEP packets: sent to the collector, dropped (the queue was full: export never slows relaying), failed (the collector could not be written)."},
			[]string{"result"})}
	e.bufs.New = func() any { b := make([]byte, 0, 2048); return &b }
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(e.packets); err != nil {
			return nil, fmt.Errorf("hep metrics: %w", err)
		}
	}
	return e, nil
}

// Send queues p for the collector, or drops it (counted) when the queue is full. It copies what
// it needs: p's payload may change once Send returns. A nil Exporter exports nothing.
func (e *Exporter) Send(p *Packet) {
	if e == nil {
		return
	}
	b := e.bufs.Get().(*[]byte)
	*b = Append((*b)[:0], p, e.cfg.AgentID, e.cfg.AuthKey)
	if len(*b) == 0 {
		e.bufs.Put(b)
		e.packets.WithLabelValues("dropped").Inc()
		return
	}
	select {
	case e.queue <- b:
	default:
		e.bufs.Put(b)
		e.packets.WithLabelValues("dropped").Inc()
	}
}

// Run writes queued packets to the collector until ctx is done. A TCP collector that goes away is
// dialled again, at most once a second; what is queued meanwhile waits or, once the queue is
// full, is dropped.
func (e *Exporter) Run(ctx context.Context) error {
	var conn net.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	var lastDial time.Time
	for {
		var b *[]byte
		select {
		case <-ctx.Done():
			return ctx.Err()
		case b = <-e.queue:
		}
		if conn == nil && time.Since(lastDial) >= time.Second {
			lastDial = time.Now()
			d := net.Dialer{Timeout: 2 * time.Second}
			var err error
			if conn, err = d.DialContext(ctx, e.cfg.Network, e.cfg.Collector.String()); err != nil {
				e.log.Warn("HEP collector unreachable", "collector", e.cfg.Collector, "err", err)
				conn = nil
			}
		}
		if conn == nil {
			e.packets.WithLabelValues("failed").Inc()
			e.bufs.Put(b)
			continue
		}
		_ = conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write(*b); err != nil {
			e.packets.WithLabelValues("failed").Inc()
			if e.cfg.Network == "tcp" {
				e.log.Warn("HEP collector write failed: reconnecting", "collector", e.cfg.Collector, "err", err)
				conn.Close()
				conn = nil
			}
		} else {
			e.packets.WithLabelValues("sent").Inc()
		}
		e.bufs.Put(b)
	}
}
