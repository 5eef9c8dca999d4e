#!/usr/bin/env bash
# Drives Segment's official Python and Node libraries against a running Sluice.
# Needs SLUICE_URL, SLUICE_WRITE_KEY, SLUICE_ADMIN_TOKEN (and SLUICE_SOURCE, default "web").
# With SLUICE_HOOKS_WRITE_KEY and SLUICE_HOOKS_SECRET (and SLUICE_HOOKS_PORT, default 18099)
# it also checks delivery through a webhook destination (python_webhook.py) and that a
# suppressed user's events are acknowledged but never stored or delivered
# (python_suppression.py). With SLUICE_WAREHOUSE_WRITE_KEY and SLUICE_WAREHOUSE_DSN it
# checks the rows both libraries' events become in the warehouse (warehouse_check.py).
# Installs the libraries from PyPI and npm on first use (into $CLIENTS_CACHE).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CLIENTS_CACHE:-$HOME/.cache/sluice/clients}
mkdir -p "$cache"
if [ ! -x "$cache/venv/bin/python" ]; then
  python3 -m venv "$cache/venv"
fi
"$cache/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
(cd "$here" && npm ci --no-audit --no-fund --silent)
"$cache/venv/bin/python" "$here/python_client.py"
if [ -n "${SLUICE_HOOKS_WRITE_KEY:-}" ]; then
  "$cache/venv/bin/python" "$here/python_webhook.py"
  "$cache/venv/bin/python" "$here/python_suppression.py"
fi
node "$here/node_client.mjs"
if [ -n "${SLUICE_WAREHOUSE_DSN:-}" ]; then
  node "$here/warehouse_send.mjs"
  "$cache/venv/bin/python" "$here/warehouse_check.py"
fi
