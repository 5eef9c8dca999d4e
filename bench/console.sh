#!/usr/bin/env bash
# The console's figures in bench/README.md, against a release sluice with ~1,000,000
# events in its log:
#  - each screen's page and the admin API calls it makes: p50 and p99 of ROUNDS requests
#    each (bench/console_latency.py), with the read-and-answer `/healthz` as the baseline;
#  - the source debugger in headless Chromium while 2,000 events/s arrive: the tab's JS
#    heap, its long tasks, and how many events it drew (tests/browser/debugger_load.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."
port=18195
EXTRA_TOML=$'[profiles]\nenabled = false'
# shellcheck source=bench/lib.sh
source bench/lib.sh
fresh
echo "loading ~1,000,000 events"
"$sluice_bench" ingest --url "http://127.0.0.1:$port" --write-key wk_bench --duration "${LOAD_S:-8}" \
  --connections 16 --batch 100 --json | tail -1
python3 bench/console_latency.py "http://127.0.0.1:$port" bench-admin-token "${ROUNDS:-300}"
(cd tests/browser && npm ci --no-audit --no-fund --silent)
password=$(grep -o 'with password [^ ]*' "$work/out" | awk '{print $3}')
SLUICE_URL="http://127.0.0.1:$port" SLUICE_WRITE_KEY=wk_bench SLUICE_SOURCE=bench \
  SLUICE_ADMIN_PASSWORD="$password" RATE="${RATE:-2000}" SECONDS_RUN="${SECONDS_RUN:-30}" \
  node tests/browser/debugger_load.mjs
