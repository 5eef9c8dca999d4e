#!/usr/bin/env bash
# Before/after of sluice binaries on the three headline scenarios, alternating binaries
# ROUNDS times, each run on a fresh data directory with bench/lib.sh's config (profile
# consumer on) and its own baseline measured in the same run:
#   ingest, batches of 100, 16 connections (events/s; baseline: sluice-bench baseline)
#   ingest, single /v1/track calls, 64 connections (requests/s, same baseline)
#   deliver: ingest → webhook → a receiver in sluice-bench (events/s; baseline: the
#   generator straight to the receiver)
# Prints one JSON line per run; then the median of every figure per binary and scenario.
# usage: ROUNDS=3 DURATION=8 bash bench/compare.sh BINARY_A BINARY_B [...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-8}
port=18291
# shellcheck source=bench/lib.sh
source bench/lib.sh
out="$work/compare.jsonl"
for round in $(seq "$rounds"); do
  for bin in "$@"; do
    sluice=$bin
    for scenario in batch100 single deliver; do
      fresh
      case $scenario in
        batch100) args=(ingest --connections 16 --batch 100) ;;
        single) args=(ingest --connections 64 --batch 0) ;;
        deliver) args=(deliver --source bench --admin-token bench-admin-token) ;;
      esac
      line=$("$sluice_bench" "${args[@]}" --url "http://127.0.0.1:$port" --write-key wk_bench \
        --duration "$duration" --json | tail -1)
      python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(binary=sys.argv[2], scenario=sys.argv[3], round=int(sys.argv[4])); print(json.dumps(d))' \
        "$line" "$bin" "$scenario" "$round" | tee -a "$out"
    done
  done
done
stop; pid=
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = ["events_per_s", "requests_per_s", "p99_ms", "baseline_requests_per_s", "ratio_to_baseline",
        "baseline_events_per_s", "server_rss_mb"]
for b in dict.fromkeys(r["binary"] for r in rows):
    for s in dict.fromkeys(r["scenario"] for r in rows):
        rs = [r for r in rows if r["binary"] == b and r["scenario"] == s]
        med = {k: statistics.median(r[k] for r in rs if r.get(k) is not None)
               for k in keys if any(r.get(k) is not None for r in rs)}
        print(f"MEDIAN {b} {s} ({len(rs)} runs): {json.dumps(med)}")
PY
