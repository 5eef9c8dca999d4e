#!/usr/bin/env bash
# Reproduces the warehouse figures of bench/README.md: `sluice-bench warehouse` RUNS times
# (throughput: EVENTS events end to end, and a bare COPY of the same rows in the same
# run), then the latency at 1,000 events/s, each against a release sluice on a fresh data
# directory and a fresh schema, with PostgreSQL on this machine (DATABASE_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?DATABASE_URL must name a PostgreSQL on this machine}"
RUNS=${RUNS:-5}
EVENTS=${EVENTS:-500000}
port=18193
EXTRA_TOML="[[destinations]]
name = \"bench-warehouse\"
type = \"warehouse\"
sources = [\"bench\"]
[destinations.settings]
url = \"$DATABASE_URL\"
schemas = { bench = \"bench_wh\" }
max_age_s = ${MAX_AGE_S:-1}"
# shellcheck source=bench/lib.sh
source bench/lib.sh
reset() { psql "$DATABASE_URL" -qX -c "DROP SCHEMA IF EXISTS bench_wh CASCADE" 2>/dev/null; fresh; }
bench() { "$sluice_bench" warehouse --url "http://127.0.0.1:$port" --write-key wk_bench \
  --admin-token bench-admin-token --json "$@"; }
: > "$work/throughput.jsonl"
for i in $(seq "$RUNS"); do
  reset
  bench --events "$EVENTS" | tail -1 | tee -a "$work/throughput.jsonl"
done
reset
bench --rate 1000 --duration "${DURATION:-20}" | tail -1 | tee "$work/latency.jsonl"
python3 - "$work/throughput.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = ["events_per_s", "rows_per_s", "ingest_events_per_s", "baseline_copy_rows_per_s", "ratio_to_copy"]
print(f"MEDIAN throughput ({len(rows)} runs): " + json.dumps({k: statistics.median(r[k] for r in rows) for k in keys}))
PY
