package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
)

// run emulates the calls of o and prints the result.
func run(o options) error {
	if o.pairs == "" {
		return errors.New("-pairs is required")
	}
	if o.size < minPacket || o.size > 1400 {
		return fmt.Errorf("-size %d: want %d-1400", o.size, minPacket)
	}
	if o.sample < 1 {
		return fmt.Errorf("-sample %d: want >= 1", o.sample)
	}
	calls, err := readPairs(o.pairs, o.calls)
	if err != nil {
		return err
	}
	// The sender and the receiver each need a thread, also when pinned to one core.
	runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	g, err := newGenerator(calls, o)
	if err != nil {
		return err
	}
	defer g.close()
	res, err := g.run(ctx)
	if err != nil {
		return err
	}
	if o.jsonOut {
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	fmt.Print(res.String())
	return nil
}
