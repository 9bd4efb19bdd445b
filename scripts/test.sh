#!/usr/bin/env bash
# The full test suite: formatting, lints, then every unit and integration test.
# Reuses a shared target dir when one exists (CI keeps it between runs on the same machine).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$HOME/.cache/confab/target" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/confab/target"
fi
echo "== model assets (scripts/fetch-models.sh)"
bash scripts/fetch-models.sh
# The cluster tests (tests/cluster.rs) start their own redis-server processes.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server (Debian package redis-server) for the cluster tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server) >/dev/null
  else
    echo "redis-server not found: install Debian's redis-server package (the cluster tests need it)" >&2
    exit 1
  fi
fi
# The MCP tests (tests/mcp_tools.rs) run a tool server written with PyPI's `mcp` SDK.
mcp_venv="${XDG_CACHE_HOME:-$HOME/.cache}/confab/tools/mcp-venv"
if ! "$mcp_venv/bin/python" -c "import mcp.server.mcpserver" 2>/dev/null; then
  echo "== installing the MCP Python SDK (PyPI mcp==2.3.0) into $mcp_venv for the MCP tests"
  python3 -m venv "$mcp_venv"
  "$mcp_venv/bin/pip" install --quiet mcp==2.3.0
fi
export CONFAB_TEST_MCP_PYTHON="$mcp_venv/bin/python"
# The trace tests (tests/telemetry.rs) export to an OTLP/HTTP receiver made for tests (PyPI oteltap).
otel_venv="${XDG_CACHE_HOME:-$HOME/.cache}/confab/tools/otel-venv"
if ! "$otel_venv/bin/python" -c "import oteltap" 2>/dev/null; then
  echo "== installing the OTLP test receiver (PyPI oteltap==1.0.0) into $otel_venv for the trace tests"
  python3 -m venv "$otel_venv"
  "$otel_venv/bin/pip" install --quiet oteltap==1.0.0
fi
export CONFAB_TEST_OTEL_PYTHON="$otel_venv/bin/python"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
echo "== promtool: SLO rules, rule unit tests, dashboard queries"
bash scripts/check-observability.sh
echo "== helm chart: lint, render, schema validation, policies (scripts/check-helm.sh)"
bash scripts/check-helm.sh
echo "== load tools smoke (loadtest/scenarios.sh smoke, ~20 s)"
bash loadtest/scenarios.sh smoke
echo "== real clients: schemathesis, openai SDK, headless Chromium (scripts/check-clients.sh)"
bash scripts/check-clients.sh
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "cargo tests: %d passed, %d failed\n", p, f }' "$log"
