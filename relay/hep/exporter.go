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
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
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

	// sipcar_hep_packets_total by result: sent, dropped (queue full), failed (write error).
	sent, dropped, failed prometheus.Counter
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
	packets := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "sipcar", Subsystem: "hep", Name: "packets_total",
		Help: "HEP packets: sent to the collector, dropped (the queue was full: export never slows relaying), failed (the collector could not be written)."},
		[]string{"result"})
	e := &Exporter{cfg: cfg, log: cfg.Logger, queue: make(chan *[]byte, cfg.Queue),
		sent: packets.WithLabelValues("sent"), dropped: packets.WithLabelValues("dropped"), failed: packets.WithLabelValues("failed")}
	e.bufs.New = func() any { b := make([]byte, 0, 2048); return &b }
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(packets); err != nil {
			return nil, fmt.Errorf("hep metrics: %w", err)
		}
	}
	return e, nil
}

// Send queues p for the collector, or drops it (counted) when the queue is full. It copies what
// it needs: p's payload may change once Send returns. A nil Exporter exports nothing.
func (e *Exporter) Send(p Packet) {
	if e == nil {
		return
	}
	b := e.bufs.Get().(*[]byte)
	*b = Append((*b)[:0], &p, e.cfg.AgentID, e.cfg.AuthKey)
	if len(*b) == 0 {
		e.bufs.Put(b)
		e.dropped.Inc()
		return
	}
	select {
	case e.queue <- b:
	default:
		e.bufs.Put(b)
		e.dropped.Inc()
	}
}

// The writer looks at the queue every flushInterval while packets keep coming, and Send never
// wakes it: a Send that readies a parked goroutine pays for waking a thread (a futex call and
// a scheduler pass), which at 1,000 messages a second nearly doubled a message's relaying time
// (BenchmarkRelayMessage in relay). HEP packets carry their capture time, so a collector
// loses nothing by the wait. After idleLooks looks at an empty queue (100 ms) the writer
// parks, and the next Send wakes it: only the first packet after a quiet spell pays.
const (
	flushInterval = 5 * time.Millisecond
	idleLooks     = 20
	// maxBatch is how many packets the writer takes from the queue at a time (one writev over
	// TCP).
	maxBatch = 64
	// finalWrite bounds the writing of what is still queued when Run stops.
	finalWrite = time.Second
)

// DrainQueue receives from queue until ctx is done, calling take for each value and then
// taken once it has taken what there was (taken may be nil); when ctx is done it takes what is
// still queued, calls taken and returns. It is how a goroutine that works off a queue filled on
// a packet path keeps from being woken by each value: it parks on the queue only after a quiet
// spell, and otherwise looks at it every few milliseconds.
func DrainQueue[T any](ctx context.Context, queue <-chan T, take func(T), taken func()) {
	defer func() {
		// At most what the queue holds: a producer that is still running cannot keep it here.
		takeQueued(queue, take, cap(queue))
		if taken != nil {
			taken()
		}
	}()
	look := time.NewTimer(flushInterval)
	defer look.Stop()
	for {
		select { // parked: the next value wakes the goroutine
		case <-ctx.Done():
			return
		case v := <-queue:
			take(v)
		}
		for idle := 0; idle < idleLooks; {
			if takeQueued(queue, take, -1) > 0 {
				idle = 0
			} else {
				idle++
			}
			if taken != nil {
				taken()
			}
			look.Reset(flushInterval)
			select {
			case <-ctx.Done():
				return
			case <-look.C:
			}
		}
	}
}

// takeQueued takes what is queued now, at most limit values (all when limit is negative), and
// returns how many it took.
func takeQueued[T any](queue <-chan T, take func(T), limit int) int {
	for n := 0; ; n++ {
		if n == limit {
			return n
		}
		select {
		case v := <-queue:
			take(v)
		default:
			return n
		}
	}
}

// Run writes queued packets to the collector until ctx is done, then what is still queued
// (waiting at most a second for the collector). A TCP collector that goes away is dialled
// again, at most once a second; what is queued meanwhile waits or, once the queue is full, is
// dropped.
func (e *Exporter) Run(ctx context.Context) error {
	w := collectorWriter{e: e}
	defer w.close()
	var final time.Time // one deadline for all that is written once ctx is done
	deadline := func() time.Time {
		if ctx.Err() == nil {
			return time.Now().Add(2 * time.Second)
		}
		if final.IsZero() {
			final = time.Now().Add(finalWrite)
		}
		return final
	}
	DrainQueue(ctx, e.queue, func(b *[]byte) {
		if w.batch = append(w.batch, b); len(w.batch) == maxBatch {
			w.write(deadline())
		}
	}, func() {
		if len(w.batch) > 0 {
			w.write(deadline())
		}
	})
	return ctx.Err()
}

// collectorWriter is Run's connection to the collector and the batch it is writing.
type collectorWriter struct {
	e        *Exporter
	conn     net.Conn
	lastDial time.Time
	batch    []*[]byte
	bufs     net.Buffers
	// Over UDP: the connected socket's batch writer (sendmmsg) and its messages, one buffer each.
	datagrams batchWriter
	msgs      []ipv4.Message
}

// batchWriter is x/net's ipv4 or ipv6 PacketConn: both write a batch with one sendmmsg.
type batchWriter interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// writeDatagrams writes the batch to the UDP collector, a datagram each, with as few system
// calls as the kernel allows. A datagram the kernel refuses (the collector's port was
// unreachable a moment ago) is counted and skipped: the rest still go.
func (w *collectorWriter) writeDatagrams() {
	if w.datagrams == nil {
		pc := w.conn.(net.PacketConn)
		if w.e.cfg.Collector.Addr().Unmap().Is4() {
			w.datagrams = ipv4.NewPacketConn(pc)
		} else {
			w.datagrams = ipv6.NewPacketConn(pc)
		}
		w.msgs = make([]ipv4.Message, maxBatch)
		for i := range w.msgs {
			w.msgs[i].Buffers = make([][]byte, 1)
		}
	}
	msgs := w.msgs[:len(w.batch)]
	for i, b := range w.batch {
		msgs[i].Buffers[0] = *b
	}
	for len(msgs) > 0 {
		n, err := w.datagrams.WriteBatch(msgs, 0)
		if err != nil {
			w.e.failed.Inc()
			n = 1
		} else {
			w.e.sent.Add(float64(n))
		}
		msgs = msgs[n:]
	}
	for i := range w.batch {
		w.msgs[i].Buffers[0] = nil
	}
}

// write writes the batch to the collector by deadline, dialling it first if need be, counts each
// packet sent or failed, and empties the batch. The dial does not end with Run's context: what
// is queued when Run stops is still written.
func (w *collectorWriter) write(deadline time.Time) {
	e := w.e
	defer func() {
		for i, b := range w.batch {
			e.bufs.Put(b)
			w.batch[i] = nil
		}
		w.batch = w.batch[:0]
	}()
	if w.conn == nil && time.Since(w.lastDial) >= time.Second {
		w.lastDial = time.Now()
		d := net.Dialer{Deadline: deadline}
		var err error
		if w.conn, err = d.Dial(e.cfg.Network, e.cfg.Collector.String()); err != nil {
			e.log.Warn("HEP collector unreachable", "collector", e.cfg.Collector, "err", err)
			w.conn = nil
		}
	}
	if w.conn == nil {
		e.failed.Add(float64(len(w.batch)))
		return
	}
	_ = w.conn.SetWriteDeadline(deadline)
	if e.cfg.Network == "udp" {
		w.writeDatagrams()
		return
	}
	// TCP: one writev for the batch. A packet written in part leaves the stream unreadable, so
	// the connection is dropped and dialled again.
	w.bufs = w.bufs[:0]
	for _, b := range w.batch {
		w.bufs = append(w.bufs, *b)
	}
	bufs := w.bufs // WriteTo consumes the slice it is called on
	n, err := bufs.WriteTo(w.conn)
	clear(w.bufs)
	sent := 0
	for _, b := range w.batch {
		if n < int64(len(*b)) {
			break
		}
		n -= int64(len(*b))
		sent++
	}
	e.sent.Add(float64(sent))
	if err != nil {
		e.failed.Add(float64(len(w.batch) - sent))
		e.log.Warn("HEP collector write failed: reconnecting", "collector", e.cfg.Collector, "err", err)
		w.conn.Close()
		w.conn = nil
	}
}

func (w *collectorWriter) close() {
	if w.conn != nil {
		w.conn.Close()
	}
}
