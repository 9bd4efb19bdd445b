#!/usr/bin/env bash
# Quality smoke of the local model through confab (not in CI: minutes on 2 cores). Starts the
# README's run command on a temporary data dir, waits for it, runs tests/clients/llm_smoke.py,
# and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(mktemp -d)
CONFAB__VECTOR__DATA_DIR="$data" bash scripts/run.sh >"$data/run.log" 2>&1 &
run_pid=$!
trap 'kill -TERM $run_pid 2>/dev/null; wait $run_pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 1200); do
  if curl -fsS 127.0.0.1:8787/readyz 2>/dev/null | grep -q '"local":{"ok":true'; then break; fi
  if ! kill -0 "$run_pid" 2>/dev/null; then cat "$data/run.log"; exit 1; fi
  sleep 1
done
curl -fsS 127.0.0.1:8787/readyz
echo
CONFAB_URL=http://127.0.0.1:8787 python3 tests/clients/llm_smoke.py
