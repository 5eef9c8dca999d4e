# Shared by bench/run.sh and bench/deliver.sh: builds the release binary, writes a config
# with one source ("bench", write key wk_bench) listening on $port, and defines
# start / stop / fresh (a server on an empty data directory) and the cleanup trap.
# Needs: port set by the caller. EXTRA_TOML (optional) is appended to the config.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
cargo build --release -q -p sluice -p sluice-bench
sluice="$CARGO_TARGET_DIR/release/sluice"
sluice_bench="$CARGO_TARGET_DIR/release/sluice-bench"
work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
cat > "$work/sluice.toml" <<TOML
listen = "127.0.0.1:$port"
admin_token = "bench-admin-token"
[[sources]]
name = "bench"
write_key = "wk_bench"
TOML
printf '%s\n' "${EXTRA_TOML:-}" >> "$work/sluice.toml"
pid=
# A server left over from an earlier run (another binary, another config) would answer
# /readyz in place of the one started here, and every figure would be its: so the port
# must be free before the start, and the server started must still run once ready.
start() {
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    echo "port $port is in use (a server left from an earlier run?); stop it first" >&2; exit 1
  fi
  "$sluice" serve --config "$work/sluice.toml" --data-dir "$work/data" >"$work/out" 2>"$work/err" &
  pid=$!
  for _ in $(seq 200); do
    if curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
      kill -0 "$pid" 2>/dev/null && return
      break
    fi
    sleep 0.05
  done
  echo "server did not start" >&2; cat "$work/err" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; }
fresh() { if [ -n "$pid" ]; then stop; fi; rm -rf "$work/data"; start; }
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
