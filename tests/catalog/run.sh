#!/usr/bin/env bash
# The catalog harness: each entry of tests/catalog/oracle.toml against Segment's own
# destination (one command). Arguments: entries to run (default: all), e.g.
#   tests/catalog/run.sh insider pushwoosh
# ORACLE_EVENTS=n and ORACLE_SEED=n change the events; ORACLE_SHOW_EVENTS=1 prints an
# event for each kind of difference.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
(cd "$here" && npm ci --no-audit --no-fund --silent)
if [ $# -gt 0 ]; then
  ORACLE_ENTRIES=$(IFS=,; echo "$*")
  export ORACLE_ENTRIES
fi
cd "$here/../.."
cargo test -p sluice-destinations --test segment_oracle -- --ignored --nocapture
