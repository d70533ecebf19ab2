// Command pulseboard is PulseBoard's all-in-one binary and CLI:
//
//	pulseboard run      ingestor, consumer, alerter and api in one process, with embedded defaults
//	pulseboard migrate  create the database if needed and apply migrations
//	pulseboard seed     create a demo user and project(s); print them (with the API keys) as JSON
//	pulseboard broker   run the embedded Kafka-protocol broker as its own process
//	pulseboard loadgen  send load to an ingestor and report events/s and latency
//	pulseboard verify   check a loadgen ledger against the events stored in Postgres
//
// Configuration is the environment (and .env); see .env.example.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopProfile, err := cpuProfile(os.Getenv("PULSEBOARD_CPUPROFILE"))
	if err == nil {
		err = run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stopProfile()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pulseboard:", err)
		os.Exit(1)
	}
}

// cpuProfile writes a CPU profile of the whole command to path, when set. The services
// serve /debug/pprof on their admin port (with ADMIN_PPROF=true); the broker and the load
// generator have none, and the benchmark needs to see where their cycles go too.
func cpuProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("PULSEBOARD_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("PULSEBOARD_CPUPROFILE: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

const usage = `usage: pulseboard <command>

commands:
  run       start the all-in-one (ingestor, consumer, alerter, api) with embedded defaults
  migrate   create the database if needed and apply migrations
  seed      create a demo user and project(s) and print them as JSON (with the API keys; -projects N)
  broker    run the embedded Kafka-protocol broker as its own process
  loadgen   send load to an ingestor (see pulseboard loadgen -h)
  verify    check a loadgen -ledger file against Postgres: nothing lost or duplicated (see -h)
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	env, err := loadEnv()
	if err != nil {
		return err
	}
	switch args[0] {
	case "run":
		return runAll(ctx, env, stdout)
	case "migrate":
		return runMigrate(ctx, env, stdout)
	case "seed":
		return runSeed(ctx, env, args[1:], stdout)
	case "broker":
		return runBroker(ctx, env, stdout)
	case "loadgen":
		return runLoadgen(ctx, args[1:], stdout, stderr)
	case "verify":
		return runVerify(ctx, env, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}
