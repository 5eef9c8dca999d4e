#!/usr/bin/env bash
# Reproduces the delivery figures of bench/README.md: runs `sluice-bench deliver` RUNS
# times per scenario, each against a release sluice on a fresh data directory, and prints
# the median of every figure. The receiver and the generator run in the bench process on
# the same machine. DEAD_EVENTS (default 1,000,000) sizes the dead-destination run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
DEAD_EVENTS=${DEAD_EVENTS:-1000000}
port=18191
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench() { "$sluice_bench" deliver --url "http://127.0.0.1:$port" --write-key wk_bench --source bench \
  --admin-token bench-admin-token --duration "$DURATION" --json "$@"; }

run() { # name, args...
  local name=$1; shift
  : > "$work/$name.jsonl"
  for i in $(seq "$RUNS"); do
    fresh
    bench "$@" | tail -1 | tee -a "$work/$name.jsonl"
  done
  python3 - "$name" "$work/$name.jsonl" <<'PY'
import json, statistics, sys
name, path = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(path)]
keys = ["events_per_s", "p50_ms", "p99_ms", "baseline_events_per_s", "server_rss_mb"]
med = {k: statistics.median(r[k] for r in rows if r.get(k) is not None) for k in keys if any(r.get(k) is not None for r in rows)}
print(f"MEDIAN {name} ({len(rows)} runs): " + json.dumps(med))
PY
}

if [ -z "${DEAD_ONLY:-}" ]; then
run batched --connections 16 --batch 100 --delivery-batch 100
run per_event --connections 16 --batch 100 --delivery-batch 1
run latency_1k --connections 4 --batch 0 --rate 1000 --no-baseline
fi
fresh
bench --connections 8 --batch 100 --dead-events "$DEAD_EVENTS" | tail -12
