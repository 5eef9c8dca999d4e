#!/usr/bin/env bash
# Unmodified analytics.js in headless Chromium (Debian's chromium package) against a
# running Sluice. Needs SLUICE_URL, SLUICE_WRITE_KEY, SLUICE_ADMIN_TOKEN; with
# SLUICE_ADMIN_PASSWORD, also the console suite (console.mjs; screenshots to SCREENSHOTS).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
(cd "$here" && npm ci --no-audit --no-fund --silent)
node "$here/browser_client.mjs"
# The console, when the first admin's password is known (the banner printed it).
if [ -n "${SLUICE_ADMIN_PASSWORD:-}" ]; then
  node "$here/console.mjs"
fi
