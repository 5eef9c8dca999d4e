#!/usr/bin/env bash
# Unmodified analytics.js in headless Chromium (Debian's chromium package) against a
# running Sluice. Needs SLUICE_URL, SLUICE_WRITE_KEY, SLUICE_ADMIN_TOKEN.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
(cd "$here" && npm ci --no-audit --no-fund --silent)
node "$here/browser_client.mjs"
