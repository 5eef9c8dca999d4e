#!/usr/bin/env bash
# Reproduces bench/README.md: runs `sluice-bench ingest` RUNS times per scenario, each
# run against a release sluice started on a fresh data directory (every run starts from
# the same state; the baseline server is measured in the same run), prints the median of
# every figure, then measures startup-to-ready with ~1,000,000 events in the log.
# STARTUP_ONLY=1 skips the load scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
# The default config runs the profile consumer, which reads every event back and files
# it on the same 2 cores (at a lower priority). PROFILES=off measures the ingest path alone.
if [ "${PROFILES:-on}" = off ]; then
  EXTRA_TOML=$'[profiles]\nenabled = false'
fi
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
port=18190
# shellcheck source=bench/lib.sh
source bench/lib.sh

run() { # name, args...
  local name=$1; shift
  : > "$work/$name.jsonl"
  for i in $(seq "$RUNS"); do
    fresh
    "$sluice_bench" ingest --url "http://127.0.0.1:$port" --write-key wk_bench --duration "$DURATION" --json "$@" \
      | tail -1 | tee -a "$work/$name.jsonl"
  done
  python3 - "$name" "$work/$name.jsonl" <<'PY'
import json, statistics, sys
name, path = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(path)]
keys = ["events_per_s", "requests_per_s", "p50_ms", "p99_ms", "baseline_requests_per_s", "ratio_to_baseline", "server_rss_mb", "server_rss_hwm_mb",
        "server_cpu_us_per_request", "generator_cpu_us_per_request", "baseline_cpu_us_per_request"]
med = {k: statistics.median(r[k] for r in rows if r.get(k) is not None) for k in keys if any(r.get(k) is not None for r in rows)}
print(f"MEDIAN {name} ({len(rows)} runs): " + json.dumps(med))
PY
}

if [ -z "${STARTUP_ONLY:-}" ]; then
run batch100 --connections 16 --batch 100
run single --connections 64 --batch 0
# Half of the single-event peak, for the latency target.
peak=$(python3 -c "import json,statistics;print(statistics.median(json.loads(l)['requests_per_s'] for l in open('$work/single.jsonl')))")
run single_half_rate --connections 64 --batch 0 --rate "$(python3 -c "print(int($peak/2))")" --no-baseline
fi

# Fill the log to ~1,000,000 events, then time a restart until /readyz answers.
fresh
# In 2-second steps, so that a fast machine does not overshoot by millions.
accepted() { curl -fs "http://127.0.0.1:$port/metrics" | awk '/^sluice_events_accepted_total/ {s+=$2} END {print int(s)}'; }
while [ "$(accepted)" -lt 1000000 ]; do
  "$sluice_bench" ingest --url "http://127.0.0.1:$port" --write-key wk_bench --connections 16 --batch 100 \
    --duration 2 --no-baseline | tail -1
done
stop
python3 - "$sluice" "$work" "$port" <<'PY'
import sqlite3, subprocess, sys, time, urllib.request
sluice, work, port = sys.argv[1:4]
n = sqlite3.connect(f"{work}/data/events.sqlite").execute(
    "select coalesce(sum(last_offset - first_offset + 1), 0) from chunks").fetchone()[0]
times = []
for _ in range(5):
    t0 = time.monotonic()
    p = subprocess.Popen([sluice, "serve", "--config", f"{work}/sluice.toml", "--data-dir", f"{work}/data"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
            break
        except Exception:
            time.sleep(0.002)
    times.append((time.monotonic() - t0) * 1000)
    p.terminate(); p.wait()
times.sort()
print(f"MEDIAN startup to ready with {n} events in the log: {times[len(times)//2]:.0f} ms (runs: {', '.join(f'{t:.0f}' for t in times)})")
PY
