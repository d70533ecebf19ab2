package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/pulseboard/pulseboard/cmd/pulseboard/internal/loadgen"
	"github.com/pulseboard/pulseboard/pkg/ledger"
)

// runLoadgen is `pulseboard loadgen`: load against an ingestor through pkg/client, or
// -serve-noop ADDR to run the no-op ceiling server.
func runLoadgen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: pulseboard loadgen [flags]

Sends events to an ingestor through pkg/client (the Go SDK) and prints a summary: a table,
or JSON with -json. With -rate the load is open-loop: event n is due at start + n/rate
whatever happened to the events before it, and latency is measured from that scheduled
time, so a stall of the server shows as latency instead of being hidden by sending less
(no coordinated omission). Without -rate it sends as fast as the server answers and
latency is per request.

flags:
`)
		fs.PrintDefaults()
	}
	var o loadgen.Options
	keys := ""
	fs.StringVar(&o.URL, "url", "http://127.0.0.1:3002", "ingestor base URL (loopback only in benchmarks)")
	fs.StringVar(&o.APIKey, "key", os.Getenv("PULSEBOARD_API_KEY"), "project API key (default $PULSEBOARD_API_KEY)")
	fs.StringVar(&keys, "keys", "", "comma-separated API keys of several projects; events go round-robin over them (and -key)")
	fs.StringVar(&o.Mode, "mode", "single", "single (POST /ingest, one event per request) or batch (POST /ingest/batch)")
	fs.IntVar(&o.BatchSize, "batch", 100, "events per batch request (-mode batch)")
	fs.BoolVar(&o.Gzip, "gzip", false, "gzip request bodies")
	fs.IntVar(&o.Connections, "connections", 64, "connections, i.e. requests in flight, shared by the keys")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to send")
	fs.Float64Var(&o.Rate, "rate", 0, "events/s across all connections and keys, on an open-loop schedule (0 = maximum throughput)")
	fs.IntVar(&o.PayloadSize, "payload-bytes", 200, "approximate size of each event")
	fs.DurationVar(&o.Linger, "linger", 5*time.Millisecond, "the longest an event waits for its batch to fill (the client's FlushInterval)")
	fs.IntVar(&o.Retries, "retries", 0, "retries per request with the same event ids (0 = the client's default, 5; -1 = none)")
	fs.StringVar(&o.Transport, "transport", "fasthttp", "HTTP stack under pkg/client: fasthttp (less CPU per request) or net/http")
	ledgerFile := fs.String("ledger", "", "record every event id and its outcome in this file (JSON lines) for `pulseboard verify`; the keys' projects come from -db, -live-url or one probe event per key")
	fs.StringVar(&o.DB, "db", "", "PostgreSQL URL: time ingest → stored for a sample of acknowledged events (and find the keys' projects)")
	fs.Float64Var(&o.DBSample, "db-sample", 0.01, "share of acknowledged events timed with -db")
	fs.StringVar(&o.Live.URL, "live-url", "", "api base URL: subscribe to a project's live stream and time ingest → delivered")
	fs.StringVar(&o.Live.Email, "live-email", demoEmail, "api user owning the live project (-live-url)")
	fs.StringVar(&o.Live.Password, "live-password", demoPassword, "that user's password")
	fs.StringVar(&o.Live.Project, "live-project", "", "project id to subscribe to (default: the first key's project)")
	fs.StringVar(&o.Live.Protocol, "live-protocol", "sse", "live stream protocol: sse or ws")
	fs.DurationVar(&o.E2EWait, "e2e-wait", 10*time.Second, "after sending, how long to wait for the remaining deliveries and stored samples")
	fs.DurationVar(&o.Progress, "progress", time.Second, "interval of progress lines on stderr (0 = none)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	noop := fs.String("serve-noop", "", "instead of sending, serve a no-op fasthttp server on this address until interrupted")
	cpuProfile := fs.String("cpuprofile", "", "write the load generator's own CPU profile to this file (what the client costs)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("creating the CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("starting the CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	if *noop != "" {
		return loadgen.ServeNoop(ctx, *noop)
	}
	for k := range strings.SplitSeq(keys, ",") {
		if k = strings.TrimSpace(k); k != "" {
			o.Keys = append(o.Keys, k)
		}
	}
	if o.APIKey == "" && len(o.Keys) == 0 {
		return errors.New("loadgen needs -key, -keys or PULSEBOARD_API_KEY (see `pulseboard seed`)")
	}
	o.ProgressOut = stderr
	var l *ledger.Ledger
	if *ledgerFile != "" {
		l = ledger.New()
		o.Ledger = l
	}
	r, err := loadgen.Run(ctx, o)
	if l != nil && l.Counts().Sent > 0 {
		if serr := saveLedger(*ledgerFile, l); serr != nil {
			return errors.Join(err, serr)
		}
		if r.Ledger != nil {
			r.Ledger.File = *ledgerFile
		}
	}
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

func saveLedger(path string, l *ledger.Ledger) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing the ledger: %w", err)
	}
	if err := l.Save(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("writing the ledger: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing the ledger: %w", err)
	}
	return nil
}
