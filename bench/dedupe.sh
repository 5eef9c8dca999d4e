#!/usr/bin/env bash
# The dedupe index's memory with EVENTS (default 10,000,000) events inside the window,
# and batch ingest beside it: for each binary given (the first is the baseline), RUNS times
# (default 2), start `sluice serve` on a fresh data directory (profiles off: the index
# alone), load it with `sluice-bench ingest --batch 100 --connections 16` in 10 s steps
# until EVENTS are accepted, and print one JSON line: events/s of the first step (an
# empty window) and of the last, the server's RSS and its dedupe gauges at the end.
#   bash bench/dedupe.sh /tmp/sluice-old target/release/sluice
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
cargo build --release -q -p sluice-bench
sluice_bench="$CARGO_TARGET_DIR/release/sluice-bench"
EVENTS=${EVENTS:-10000000}
RUNS=${RUNS:-2}
port=18191
for run in $(seq "$RUNS"); do
  for bin in "$@"; do
    dir=$(mktemp -d /tmp/sluice-dedupe.XXXXXX)
    printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/data"\nadmin_token = "bench-admin"\n[[sources]]\nname = "bench"\nwrite_key = "wk_bench"\n[profiles]\nenabled = false\n' \
      "$port" "$dir" > "$dir/sluice.toml"
    "$bin" serve --config "$dir/sluice.toml" > "$dir/out" 2> "$dir/err" &
    pid=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" > /dev/null 2>&1 && break; sleep 0.1; done
    metric() { curl -fs "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {print s+0}'; }
    first=""
    last=""
    while [ "$(metric sluice_events_accepted_total)" -lt "$EVENTS" ]; do
      last=$("$sluice_bench" ingest --url "http://127.0.0.1:$port" --write-key wk_bench --connections 16 \
        --batch 100 --duration 10 --no-baseline --json | tail -1)
      [ -n "$first" ] || first=$last
    done
    rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    hwm_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    python3 - "$bin" "$run" "$first" "$last" "$rss_kb" "$hwm_kb" "$(metric sluice_events_accepted_total)" \
      "$(metric sluice_dedupe_entries)" "$(metric sluice_dedupe_bytes)" "$(metric sluice_dedupe_runs)" <<'PY'
import json, sys
b, run, first, last, rss, hwm, accepted, entries, dbytes, runs = sys.argv[1:]
f, l = json.loads(first), json.loads(last)
print(json.dumps({"binary": b, "run": int(run), "accepted": int(float(accepted)),
                  "events_per_s_empty_window": f["events_per_s"], "events_per_s_full_window": l["events_per_s"],
                  "rss_mb": round(int(rss) / 1024, 1), "rss_hwm_mb": round(int(hwm) / 1024, 1),
                  "dedupe_entries": int(float(entries)), "dedupe_mb": round(float(dbytes) / 2**20, 1),
                  "dedupe_runs": int(float(runs))}), flush=True)
PY
    kill "$pid"; wait "$pid" || true
    rm -rf "$dir"
  done
done
