// Command relayd runs package mediarelay for the benchmark: it relays the calls of an
// rtpload pairs file (A-endpoint relay-A B-endpoint relay-B per line) until SIGINT or
// SIGTERM, then prints the relay's counters.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/sipcar/sipcar/mediarelay"
)

func main() {
	pairs := flag.String("pairs", "", "rtpload pairs file (required)")
	mode := flag.String("mode", "fanin", "fanin, fanin-perport or fallback")
	portMin := flag.Uint("port-min", 20000, "relay port range start")
	portMax := flag.Uint("port-max", 29999, "relay port range end")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	noQuality := flag.Bool("no-quality", false, "turn call-quality analysis off (mediarelay.Config.NoQuality)")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "relayd:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "relayd:", err)
			os.Exit(1)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	if err := run(*pairs, *mode, uint16(*portMin), uint16(*portMax), *noQuality); err != nil {
		fmt.Fprintln(os.Stderr, "relayd:", err)
		os.Exit(1)
	}
}

func run(pairs, mode string, portMin, portMax uint16, noQuality bool) error {
	cfg := mediarelay.Config{PortMin: portMin, PortMax: portMax, NoQuality: noQuality,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	switch mode {
	case "fanin":
		cfg.Mode, cfg.FanInSend = mediarelay.ModeFanIn, mediarelay.SendRaw
	case "fanin-perport":
		cfg.Mode, cfg.FanInSend = mediarelay.ModeFanIn, mediarelay.SendPerPort
	case "fallback":
		cfg.Mode = mediarelay.ModeFallback
	default:
		return fmt.Errorf("-mode %q: want fanin, fanin-perport or fallback", mode)
	}
	if pairs == "" {
		return errors.New("-pairs is required")
	}
	r, err := mediarelay.New(cfg)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.Open(pairs)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 4 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		var a [4]netip.AddrPort
		for i, s := range fields {
			if a[i], err = netip.ParseAddrPort(s); err != nil {
				return err
			}
		}
		spec := mediarelay.StreamSpec{
			CallID: fmt.Sprint("bench-", n),
			A:      mediarelay.LegSpec{RTP: a[1], RTCP: netip.AddrPortFrom(a[1].Addr(), a[1].Port()+1), Peer: a[0]},
			B:      mediarelay.LegSpec{RTP: a[3], RTCP: netip.AddrPortFrom(a[3].Addr(), a[3].Port()+1), Peer: a[2]},
		}
		for _, p := range []netip.AddrPort{spec.A.RTP, spec.A.RTCP, spec.B.RTP, spec.B.RTCP} {
			if _, err := r.Reserve("udp", p); err != nil { // closed by r.Close
				return err
			}
		}
		if _, err := r.AddStream(spec); err != nil {
			return err
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "relayd: %d calls, fan-in %v\n", n, r.FanIn())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = r.Run(ctx)
	c := r.Counters()
	fmt.Fprintf(os.Stderr, "relayd: forwarded %d, dropped %v\n", c.Forwarded, c.Dropped)
	return err
}
