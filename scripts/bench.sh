#!/usr/bin/env bash
# End-to-end benchmark of PulseBoard on this machine (`make bench`): the no-op ceiling, the
# ingestor and broker alone, the consumer's store ceiling, a sustained end-to-end run on the
# all-in-one with lag, live-delivery and stored latency, the same on a real Apache Kafka
# broker beside the embedded one, and (full mode) the WebSocket
# fan-out. scripts/bench.py says what each step measures and which variables it reads
# (BENCH_SHORT=1 is CI's 2-5 s smoke mode). It fails unless every acknowledged event was
# stored exactly once.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x bin/pulseboard ] && [ -x bin/ingestor ] && [ -x bin/consumer ] || make build >/dev/null
exec python3 scripts/bench.py "$@"
