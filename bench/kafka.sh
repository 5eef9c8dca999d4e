#!/usr/bin/env bash
# Reproduces the Kafka deployment's figures of bench/README.md : `sluice-bench
# ingest` (batches of 100) and `sluice-bench deliver` (batched webhook delivery) against a
# release sluice on `[log] kind = "kafka"` + `[store] kind = "postgres"`, and the same two
# against the embedded default in the same session. Every run starts fresh: a new topic,
# consumer-group prefix and database on the Kafka side, an empty data directory on the
# embedded side. Prints the median of every figure per scenario.
# Needs a broker and PostgreSQL, e.g. the ones .ci/run starts:
#   KAFKA_BROKERS (default 127.0.0.1:19092), DATABASE_URL (default
#   postgres://postgres@127.0.0.1:55432/postgres).
# KAFKA_RESET: a command run before every Kafka run, e.g. one that restarts a local tansu
# on an empty database — tansu's SQLite engine slows down as its database grows (a fetch
# took ~50 ms on an empty one and ~2.5 s at 165 MB), which would make later runs measure
# the broker's history rather than Sluice.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:19092}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:55432/postgres}
PARTITIONS=${PARTITIONS:-4}
port=18192
# shellcheck source=bench/lib.sh
source bench/lib.sh
cp "$work/sluice.toml" "$work/embedded.toml"

# A fresh Kafka + PostgreSQL configuration in $work/sluice.toml.
kafka_config() {
  local id
  if [ -n "${KAFKA_RESET:-}" ]; then bash -c "$KAFKA_RESET"; fi
  id="b$(date +%s%N)"
  psql -q "$DATABASE_URL" -c "CREATE DATABASE $id" >/dev/null
  cat "$work/embedded.toml" - > "$work/sluice.toml" <<TOML
[log]
kind = "kafka"
brokers = "$KAFKA_BROKERS"
topic = "bench-$id"
partitions = $PARTITIONS
group_prefix = "bench-$id."
[store]
kind = "postgres"
url = "${DATABASE_URL%/*}/$id"
[profiles]
enabled = false
TOML
}
embedded_config() {
  { cat "$work/embedded.toml"; printf '[profiles]\nenabled = false\n'; } > "$work/sluice.toml"
}

run() { # name, config, ingest|deliver, args...
  local name=$1 config=$2 what=$3; shift 3
  : > "$work/$name.jsonl"
  for _ in $(seq "$RUNS"); do
    "${config}_config"
    fresh
    if [ "$what" = ingest ]; then
      "$sluice_bench" ingest --url "http://127.0.0.1:$port" --write-key wk_bench \
        --duration "$DURATION" --json "$@"
    else
      "$sluice_bench" deliver --url "http://127.0.0.1:$port" --write-key wk_bench --source bench \
        --admin-token bench-admin-token --duration "$DURATION" --json "$@"
    fi | tail -1 | tee -a "$work/$name.jsonl"
  done
  python3 - "$name" "$work/$name.jsonl" <<'PY'
import json, statistics, sys
name, path = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(path)]
keys = ["events_per_s", "requests_per_s", "p50_ms", "p99_ms", "baseline_requests_per_s",
        "baseline_events_per_s", "server_rss_mb"]
med = {k: statistics.median(r[k] for r in rows if r.get(k) is not None)
       for k in keys if any(r.get(k) is not None for r in rows)}
print(f"MEDIAN {name} ({len(rows)} runs): " + json.dumps(med))
PY
}

# The bound (bench/README.md): a bare producer sending the same messages to the same
# broker in the same session, before the deployment's ingest runs, each on a fresh topic.
: > "$work/kafka_produce.jsonl"
for _ in $(seq "$RUNS"); do
  if [ -n "${KAFKA_RESET:-}" ]; then bash -c "$KAFKA_RESET"; fi
  "$sluice_bench" kafka-produce --brokers "$KAFKA_BROKERS" --topic "bench-produce-$(date +%s%N)" \
    --partitions "$PARTITIONS" --connections 16 --batch 100 --duration "$DURATION" --json \
    | tail -1 | tee -a "$work/kafka_produce.jsonl"
done
python3 -c 'import json,statistics,sys; r=[json.loads(l)["events_per_s"] for l in open(sys.argv[1])]; print("MEDIAN kafka_produce (%d runs): %s" % (len(r), json.dumps({"events_per_s": statistics.median(r)})))' "$work/kafka_produce.jsonl"
run kafka_ingest kafka ingest --connections 16 --batch 100
run embedded_ingest embedded ingest --connections 16 --batch 100
run kafka_deliver kafka deliver --connections 16 --batch 100 --delivery-batch 100
run embedded_deliver embedded deliver --connections 16 --batch 100 --delivery-batch 100
