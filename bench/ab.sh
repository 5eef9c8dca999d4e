#!/usr/bin/env bash
# A/B of sluice binaries under batch ingest: alternates the binaries given, ROUNDS times,
# each run on a fresh data directory with bench/lib.sh's config (profile consumer on), and
# prints per run: binary, events/s, p99 ms, peak server RSS (MB) and the dedupe gauges
# (entries, MB) from /metrics at the end. Build the binaries first (e.g. one per commit);
# sluice-bench (built by bench/lib.sh) drives every run.
# usage: ROUNDS=3 DURATION=8 bash bench/ab.sh OLD_BINARY NEW_BINARY [...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-8}
port=18290
# shellcheck source=bench/lib.sh
source bench/lib.sh
for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    sluice=$bin
    fresh
    out=$("$sluice_bench" ingest --url "http://127.0.0.1:$port" --write-key wk_bench --duration "$duration" \
      --connections 16 --batch 100 --json --no-baseline | tail -1)
    gauges=$(curl -fs "http://127.0.0.1:$port/metrics" \
      | awk '/^sluice_dedupe_entries / {e=$2} /^sluice_dedupe_bytes / {b=$2/1048576} END {printf "dedupe_entries=%d dedupe_mb=%.1f", e, b}')
    stop; pid=
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(sys.argv[2], d["events_per_s"], d["p99_ms"], d["server_rss_mb"], sys.argv[3])' \
      "$out" "$bin" "$gauges"
  done
done
