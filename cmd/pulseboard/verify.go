package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/ledger"
)

// verifyOutput is the JSON form of `pulseboard verify`: the ledger.Report and how the wait
// for the pipeline to settle ended.
type verifyOutput struct {
	ledger.Report
	Settled       bool    `json:"settled"` // the stored count was stable and at least the acked count
	WaitedSeconds float64 `json:"waitedSeconds"`
	StoredRows    int64   `json:"storedRows"` // rows in the ledger's projects when the wait ended
	OK            bool    `json:"ok"`
}

// runVerify is `pulseboard verify`: it checks a load generator's ledger against Postgres
// once no more events arrive, and fails when an acknowledged event was lost, an event was
// stored twice, an unknown one appeared, or a rejected one was stored.
func runVerify(ctx context.Context, env config.Env, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: pulseboard verify -ledger FILE [-ledger FILE…] [flags]

Waits until the events stored in the ledger's projects stop changing (and are at least as
many as the acknowledged ones), then compares them with the ledger written by
`+"`pulseboard loadgen -ledger FILE`"+`: every acknowledged event stored exactly once, no
rejected or unknown event stored. Exits non-zero otherwise. Every event stored in those
projects counts, so use projects that received nothing else.

flags:
`)
		fs.PrintDefaults()
	}
	var files []string
	fs.Func("ledger", "ledger file written by loadgen -ledger (repeat the flag, or separate with commas, for several; required)", func(v string) error {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				files = append(files, f)
			}
		}
		return nil
	})
	dbURL := fs.String("db", "", "PostgreSQL URL (default $DATABASE_URL or the all-in-one's)")
	wait := fs.Duration("wait", 2*time.Minute, "the longest to wait for the stored events to settle")
	stable := fs.Duration("stable", 2*time.Second, "how long the stored count must stay unchanged to count as settled")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) == 0 {
		fs.Usage()
		return errors.New("verify needs -ledger FILE")
	}
	if *dbURL == "" {
		cfg, err := config.Parse[Common](env)
		if err != nil {
			return err
		}
		*dbURL = cfg.DatabaseURL
	}
	l := ledger.New()
	for _, f := range files {
		if err := loadLedger(f, l); err != nil {
			return err
		}
	}
	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()

	start := time.Now()
	out := verifyOutput{}
	out.Settled, out.StoredRows, err = settle(ctx, pool, l.Projects(), int64(l.Counts().Acked), *wait, *stable)
	if err != nil {
		return err
	}
	out.WaitedSeconds = time.Since(start).Seconds()
	if out.Report, err = ledger.Verify(ctx, pool, l); err != nil {
		return err
	}
	out.OK = out.Report.Err() == nil
	if *asJSON {
		b, _ := json.Marshal(out)
		fmt.Fprintln(stdout, string(b))
	} else {
		state := "settled"
		if !out.Settled {
			state = "not settled (the wait expired)"
		}
		fmt.Fprintf(stdout, "%s\nwaited %.1f s, %s, %d rows in the ledger's %d project(s)\n",
			out.Report, out.WaitedSeconds, state, out.StoredRows, len(l.Projects()))
		if out.OK {
			fmt.Fprintln(stdout, "OK: every acknowledged event stored exactly once; nothing rejected or unknown stored")
		}
	}
	if err := out.Report.Err(); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	return nil
}

func loadLedger(path string, l *ledger.Ledger) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading the ledger: %w", err)
	}
	defer f.Close()
	if err := l.Load(f); err != nil {
		return fmt.Errorf("reading the ledger %s: %w", path, err)
	}
	return nil
}

// settle polls the number of events stored in the projects until it is at least acked
// and has not changed for stable, or wait has passed; it reports whether it settled.
func settle(ctx context.Context, pool *pgxpool.Pool, projects []uuid.UUID, acked int64, wait, stable time.Duration) (bool, int64, error) {
	deadline := time.Now().Add(wait)
	last, since := int64(-1), time.Now()
	for {
		var n int64
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE project_id = ANY($1)`, projects).Scan(&n); err != nil {
			return false, 0, fmt.Errorf("counting stored events: %w", err)
		}
		now := time.Now()
		if n != last {
			last, since = n, now
		}
		if n >= acked && now.Sub(since) >= stable {
			return true, n, nil
		}
		if now.After(deadline) {
			return false, n, nil
		}
		select {
		case <-ctx.Done():
			return false, n, ctx.Err()
		case <-time.After(min(250*time.Millisecond, stable/4+time.Millisecond)):
		}
	}
}
