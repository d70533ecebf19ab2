package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/pulseboard/pulseboard/cmd/pulseboard/internal/loadgen"
)

// runLoadgen is `pulseboard loadgen`: load against an ingestor, or -serve-noop ADDR to run
// the no-op ceiling server.
func runLoadgen(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	var o loadgen.Options
	fs.StringVar(&o.URL, "url", "http://127.0.0.1:3001", "ingestor base URL (loopback only in benchmarks)")
	fs.StringVar(&o.APIKey, "key", os.Getenv("PULSEBOARD_API_KEY"), "project API key (default $PULSEBOARD_API_KEY)")
	fs.StringVar(&o.Mode, "mode", "single", "single (POST /ingest) or batch (POST /ingest/batch)")
	fs.IntVar(&o.BatchSize, "batch", 100, "events per batch request")
	fs.BoolVar(&o.Gzip, "gzip", false, "gzip batch bodies")
	fs.IntVar(&o.Connections, "connections", 64, "concurrent connections")
	fs.DurationVar(&o.Duration, "duration", 10e9, "how long to send")
	fs.Float64Var(&o.Rate, "rate", 0, "requests/s (0 = maximum throughput)")
	fs.IntVar(&o.PayloadSize, "payload-bytes", 200, "approximate payload size per event")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	noop := fs.String("serve-noop", "", "instead of sending, serve a no-op fasthttp server on this address until interrupted")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *noop != "" {
		return loadgen.ServeNoop(ctx, *noop)
	}
	if o.APIKey == "" {
		return fmt.Errorf("loadgen needs -key or PULSEBOARD_API_KEY (see `pulseboard seed`)")
	}
	r, err := loadgen.Run(ctx, o)
	if err != nil {
		return err
	}
	if *asJSON {
		fmt.Fprintln(stdout, string(r.JSON()))
	} else {
		r.Print(stdout)
	}
	return nil
}
