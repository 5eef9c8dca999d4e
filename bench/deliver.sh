#!/usr/bin/env bash
# Reproduces the delivery figures of bench/RESULTS.md: runs `sluice bench deliver` RUNS
# times per scenario, each against a release sluice on a fresh data directory, and prints
# the median of every figure. The receiver and the generator run in the bench process on
# the same machine. DEAD_EVENTS (default 1,000,000) sizes the dead-destination run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
DEAD_EVENTS=${DEAD_EVENTS:-1000000}
cargo build --release -q -p sluice
sluice="$CARGO_TARGET_DIR/release/sluice"
work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
port=18191
cat > "$work/sluice.toml" <<TOML
listen = "127.0.0.1:$port"
admin_token = "bench-admin-token"
[[sources]]
name = "bench"
write_key = "wk_bench"
TOML
pid=
start() {
  "$sluice" serve --config "$work/sluice.toml" --data-dir "$work/data" >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "server did not start"; cat "$work/err"; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }
fresh() { if [ -n "$pid" ]; then stop; fi; rm -rf "$work/data"; start; }
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
bench() { "$sluice" bench deliver --url "http://127.0.0.1:$port" --write-key wk_bench --source bench \
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
