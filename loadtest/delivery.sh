#!/usr/bin/env bash
# Upstream-token → client-delta latency through confab on loopback (release build).
# Starts the stamped mock upstream and confab on free ports, runs `confab-load delivery`, stops both.
# Usage: bash loadtest/delivery.sh [TOKENS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$HOME/.cache/confab/target" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/confab/target"
fi
cargo build --release --locked --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"
mock_port=18080; confab_port=18787
"$bin/mock-upstream" --port "$mock_port" --stamped --tokens 200 --ttft-ms 0 --tokens-per-sec 200 >/dev/null &
mock_pid=$!
CONFAB__SERVER__BIND="127.0.0.1:$confab_port" CONFAB__PROVIDER__BASE_URL="http://127.0.0.1:$mock_port/v1" \
  CONFAB__LOG__LEVEL=warn "$bin/confab" serve &
confab_pid=$!
trap 'kill $mock_pid $confab_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$confab_port/readyz" >/dev/null && break; sleep 0.1; done
"$bin/confab-load" delivery --url "ws://127.0.0.1:$confab_port/v1/ws" --tokens "${1:-2000}" --clients "${2:-2}" --json
