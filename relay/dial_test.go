package relay

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// Every message queued on a connection sipcar dials is answered for when the connect is
// refused, however the refusal and the queueing interleave: each send either returns an error
// or later calls its failure handler. (A message queued in the moment between the connection's
// open check and the queue once sat on the dead connection for good, and its sender never got
// the 503; CI caught it as TestUnreachableTCPNextHopGets503 waiting in vain.)
func TestRefusedDialFailsEveryQueuedMessage(t *testing.T) {
	b := newLoopbed(t, nil)
	for start := time.Now(); !b.r.Ready(); time.Sleep(time.Millisecond) { // sends come from Run's goroutines, after it read the descriptor limit
		if time.Since(start) > 10*time.Second {
			t.Fatal("the relay never got ready")
		}
	}
	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), freeUDPPort(t)) // nothing listens on TCP there
	const sends = 3000
	var told atomic.Int64
	for range sends {
		b.r.tp.streams.mu.Lock()
		clear(b.r.tp.streams.failed) // dial every time rather than fail at once from memory
		b.r.tp.streams.mu.Unlock()
		if err := b.r.tp.send(b.sip, "tcp", closed, []byte("OPTIONS"), func(error) { told.Add(1) }); err != nil {
			told.Add(1)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for told.Load() < sends && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := told.Load(); n != sends {
		t.Fatalf("%d of %d messages to a refusing next hop were never answered for", sends-n, sends)
	}
}
