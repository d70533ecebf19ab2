#!/usr/bin/env bash
# End-to-end benchmark of the all-in-one on this machine (`make bench`).
#
# In one run it measures the no-op fasthttp ceiling, then single-event and batch ingest
# through the all-in-one (embedded broker, local Postgres and Redis), then how long the
# consumer needs to store everything that was acknowledged. Results: a markdown and a JSON
# report under bench/results/. Load goes to 127.0.0.1 only and every loop is time-bounded.
#
# BENCH_DURATION (default 10s) sets each scenario's length; BENCH_SHORT=1 runs 2 s
# scenarios (used by CI so the harness never rots); BENCH_OUT sets the report folder. The
# script fails unless every acknowledged event was stored exactly once.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=./bin/pulseboard
DURATION=${BENCH_DURATION:-10s}
[ "${BENCH_SHORT:-}" = 1 ] && DURATION=2s
INGEST_PORT=${BENCH_INGEST_PORT:-3201}
ADMIN_PORT=${BENCH_ADMIN_PORT:-9201}
NOOP_PORT=${BENCH_NOOP_PORT:-3299}
KAFKA_PORT=${BENCH_KAFKA_PORT:-19092}
DB_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/pulseboard_bench?sslmode=disable}
OUT=${BENCH_OUT:-bench/results}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
LOG=$(mktemp)
JSONL=$(mktemp)

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

[ -x "$BIN" ] || make build >/dev/null

# A fresh database so that numbers do not depend on earlier runs.
PGOPTIONS="-c client_min_messages=warning" psql "${DB_URL%/*}/postgres?sslmode=disable" -qc "DROP DATABASE IF EXISTS pulseboard_bench WITH (FORCE)" >/dev/null

export DATABASE_URL=$DB_URL INGEST_PORT ADMIN_PORT KAFKA_EMBEDDED_PORT=$KAFKA_PORT KAFKA_BROKERS= \
	INGEST_RATE_LIMIT=0 LOG_LEVEL=warn
KEY=$($BIN seed | python3 -c 'import json,sys; print(json.load(sys.stdin)["project"]["apiKey"])')

echo "== no-op fasthttp ceiling (same machine, same run)"
$BIN loadgen -serve-noop 127.0.0.1:$NOOP_PORT & pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$NOOP_PORT) 2>/dev/null && break; sleep 0.1; done
$BIN loadgen -url http://127.0.0.1:$NOOP_PORT -key x -mode single -connections 64 -duration "$DURATION" -json | tee -a "$JSONL" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("noop   %9.0f req/s  p50=%.2fms p99=%.2fms" % (r["requestsPerSecond"], r["latencyMs"]["p50"], r["latencyMs"]["p99"]))'
kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'

echo "== all-in-one"
$BIN run >"$LOG" 2>&1 & pids+=($!)
RUN_PID=${pids[-1]}
for _ in $(seq 300); do curl -fs http://127.0.0.1:$ADMIN_PORT/readyz >/dev/null && break; sleep 0.1; done
curl -fs http://127.0.0.1:$ADMIN_PORT/readyz >/dev/null || { cat "$LOG"; exit 1; }

scenario() { # name, loadgen flags…
	local name=$1; shift
	$BIN loadgen -url http://127.0.0.1:$INGEST_PORT -key "$KEY" -duration "$DURATION" -json "$@" \
		| python3 -c 'import json,sys; r=json.load(sys.stdin); r["scenario"]=sys.argv[1]; print(json.dumps(r))' "$name" \
		| tee -a "$JSONL" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-22s %9.0f events/s %8.0f req/s  p50=%.2fms p90=%.2fms p99=%.2fms  %s" % (r["scenario"], r["eventsPerSecond"], r["requestsPerSecond"], r["latencyMs"]["p50"], r["latencyMs"]["p90"], r["latencyMs"]["p99"], r["statuses"]))'
}
scenario single-64conns -mode single -connections 64
scenario batch100-16conns -mode batch -batch 100 -connections 16
scenario batch100-gzip-16conns -mode batch -batch 100 -gzip -connections 16

echo "== waiting for the consumer to store everything acknowledged"
ACKED=$(python3 -c 'import json,sys; print(sum(json.loads(l).get("eventsAccepted",0) for l in open(sys.argv[1]) if "scenario" in l))' "$JSONL")
t0=$(date +%s.%N)
for _ in $(seq 1200); do
	STORED=$(psql "$DB_URL" -tAc "SELECT count(*) FROM events")
	[ "$STORED" -ge "$ACKED" ] && break
	sleep 0.25
done
t1=$(date +%s.%N)
echo "acknowledged=$ACKED stored=$STORED (catch-up after load: $(python3 -c "print(round($t1-$t0,2))") s)"
DUPES=$(psql "$DB_URL" -tAc "SELECT count(*) - count(DISTINCT id) FROM events")
echo "duplicates stored: $DUPES"
FAILED=""
if [ "$ACKED" -eq 0 ] || [ "$STORED" -ne "$ACKED" ] || [ "$DUPES" -ne 0 ]; then
	FAILED="bench: acknowledged $ACKED, stored $STORED, duplicates $DUPES: every acknowledged event must be stored exactly once"
fi
curl -fs http://127.0.0.1:$ADMIN_PORT/metrics | grep -E '^pulseboard_consumer_(rows_stored|duplicates)' || true

kill -TERM "$RUN_PID"; wait "$RUN_PID" || true; pids=()

python3 - "$JSONL" "$OUT/bench-$STAMP" "$ACKED" "$STORED" "$DUPES" <<'PY'
import json, platform, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
noop = rows[0]
load = os.getloadavg()
out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": load}, "noop": noop, "scenarios": rows[1:],
       "acknowledged": int(sys.argv[3]), "stored": int(sys.argv[4]), "duplicates": int(sys.argv[5])}
json.dump(out, open(sys.argv[2] + ".json", "w"), indent=2)
with open(sys.argv[2] + ".md", "w") as f:
    f.write("# PulseBoard bench\n\nmachine: %d CPUs, %s; load average at the end %.1f / %.1f / %.1f "
            "(the load generator runs on the same cores; other work on the machine lowers every figure)\n\n"
            % ((os.cpu_count(), platform.platform()) + load))
    f.write("no-op fasthttp ceiling: %.0f req/s (p50 %.2f ms, p99 %.2f ms)\n\n" % (noop["requestsPerSecond"], noop["latencyMs"]["p50"], noop["latencyMs"]["p99"]))
    f.write("| scenario | events/s | req/s | req/s vs no-op | p50 ms | p90 ms | p99 ms | statuses |\n|---|---|---|---|---|---|---|---|\n")
    for r in rows[1:]:
        f.write("| %s | %.0f | %.0f | %.0f %% | %.2f | %.2f | %.2f | %s |\n" % (r["scenario"], r["eventsPerSecond"], r["requestsPerSecond"],
                100 * r["requestsPerSecond"] / noop["requestsPerSecond"], r["latencyMs"]["p50"], r["latencyMs"]["p90"], r["latencyMs"]["p99"], r["statuses"]))
    f.write("\nacknowledged %s, stored %s, duplicates %s\n" % (sys.argv[3], sys.argv[4], sys.argv[5]))
print("report:", sys.argv[2] + ".md")
PY
if [ -n "$FAILED" ]; then
	echo "$FAILED" >&2
	exit 1
fi
