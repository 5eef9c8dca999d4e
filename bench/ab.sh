#!/usr/bin/env bash
# A/B of sluice binaries under batch ingest: alternates the binaries given, ROUNDS times,
# each run on a fresh data directory with the default config (profile consumer on), and
# prints per run: binary, events/s, p99 ms, peak server RSS (MB) and the dedupe gauges
# (entries, MB) from /metrics at the end. Build the binaries first (e.g. one per commit).
# usage: ROUNDS=3 DURATION=8 bash bench/ab.sh OLD_BINARY NEW_BINARY [...]
set -euo pipefail
rounds=${ROUNDS:-3}
duration=${DURATION:-8}
port=18290
work=$(mktemp -d /tmp/sluice-ab.XXXXXX)
pid=
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
cat > "$work/sluice.toml" <<TOML
listen = "127.0.0.1:$port"
admin_token = "bench-admin-token"
[[sources]]
name = "bench"
write_key = "wk_bench"
TOML
for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    rm -rf "$work/data"
    "$bin" serve --config "$work/sluice.toml" --data-dir "$work/data" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
    # The first binary drives every run: the same generator for all.
    out=$("$1" bench ingest --url "http://127.0.0.1:$port" --write-key wk_bench --duration "$duration" \
      --connections 16 --batch 100 --json --no-baseline | tail -1)
    gauges=$(curl -fs "http://127.0.0.1:$port/metrics" \
      | awk '/^sluice_dedupe_entries / {e=$2} /^sluice_dedupe_bytes / {b=$2/1048576} END {printf "dedupe_entries=%d dedupe_mb=%.1f", e, b}')
    kill -TERM "$pid"; wait "$pid" || true; pid=
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(sys.argv[2], d["events_per_s"], d["p99_ms"], d["server_rss_mb"], sys.argv[3])' \
      "$out" "$bin" "$gauges"
  done
done
