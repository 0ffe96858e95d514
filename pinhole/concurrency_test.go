package pinhole

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestConcurrency has goroutines allocate, refresh, renegotiate and release at once while Run
// expires what they leave idle (the bubble's clock moves when they all sleep). Each releases what
// it made; then every port must be free and the tables empty. Run it with -race.
func TestConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, f := newTestMap(t, Config{
			MediaPorts:        PortRange{20000, 20199},
			SignalingPorts:    PortRange{40000, 40049},
			MaxCallsPerSource: 8,
		})
		var rel releases
		m.cfg.OnRelease = rel.record
		runMap(t, m)

		const workers, ops = 8, 2000
		var wg sync.WaitGroup
		for g := range workers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 7))
				phone := netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + g)})
				var calls []string
				var sigs []*Binding
				expected := func(err error) {
					if err != nil && !errors.Is(err, ErrNoPorts) && !errors.Is(err, ErrCallLimit) && !errors.Is(err, ErrCallEnded) {
						t.Errorf("worker %d: %v", g, err)
					}
				}
				for i := range ops {
					switch r.IntN(10) {
					case 0, 1, 2: // a new call, or a re-INVITE of one, with 1-3 streams
						id := fmt.Sprintf("w%d-%d", g, i)
						if len(calls) > 0 && r.IntN(2) == 0 {
							id = calls[r.IntN(len(calls))]
						} else {
							calls = append(calls, id)
						}
						tx := m.Begin(id, phone)
						var err error
						for s := range 1 + r.IntN(3) {
							from := Side(1 + r.IntN(2))
							if _, err = tx.Media(MediaRequest{From: from, Index: s, RTP: netip.AddrPortFrom(phone, uint16(3000+2*r.IntN(4))), Held: r.IntN(8) == 0}); err != nil {
								break
							}
						}
						if r.IntN(6) == 0 {
							tx.Drop(0, r.IntN(3))
						}
						if err != nil || r.IntN(5) == 0 {
							tx.Rollback()
						} else {
							err = tx.Commit()
						}
						expected(err)
					case 3: // BYE
						if len(calls) > 0 {
							m.ReleaseCall(calls[r.IntN(len(calls))], ReasonCallEnded)
						}
					case 4, 5: // media on any port, anyone's
						if b := m.LookupMedia(uint16(20000 + r.IntN(200))); b != nil {
							now := m.Now()
							b.SetPeer(netip.AddrPortFrom(phone, 3000))
							b.Received(172, now)
							if p := b.Partner(); p != nil {
								p.Sent(172, now)
							}
						}
					case 6: // signaling, partly to endpoints other workers use too
						addr := netip.AddrPortFrom(phone, uint16(5060+r.IntN(4)))
						if r.IntN(3) == 0 {
							addr = netip.AddrPortFrom(netip.MustParseAddr("203.0.113.5"), 5060)
						}
						b, err := m.Signaling(Side(1+r.IntN(2)), []string{"udp", "tcp"}[r.IntN(2)], addr, "x")
						expected(err)
						if err == nil {
							sigs = append(sigs, b)
							if r.IntN(4) == 0 {
								m.Registered(b, time.Duration(r.IntN(300))*time.Second)
							}
							m.Resolve(b.Faces(), b.Address())
						}
					case 7:
						if len(sigs) > 0 {
							m.Release(sigs[r.IntN(len(sigs))], ReasonReleased)
						}
					case 8:
						m.Snapshot()
						if len(calls) > 0 {
							m.TouchCall(calls[r.IntN(len(calls))])
						}
					case 9:
						time.Sleep(time.Duration(r.IntN(40)) * time.Second)
					}
				}
				for _, id := range calls {
					m.ReleaseCall(id, ReasonCallEnded)
				}
				for _, b := range sigs {
					m.Release(b, ReasonReleased)
				}
			})
		}
		wg.Wait()
		// Run may be expiring a binding as the workers finish: it takes it out of the tables
		// under the lock and closes its port after; let it get there.
		synctest.Wait()
		assertEmpty(t, m, f)
		// Every kind of release happened, so the test exercised them against each other.
		for _, r := range []Reason{ReasonLifetime, ReasonSetup, ReasonIdle, ReasonCallEnded, ReasonRenegotiated, ReasonReleased} {
			if rel.count(r) == 0 {
				t.Errorf("no release for reason %s", r)
			}
		}
	})
}
