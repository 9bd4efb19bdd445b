#!/usr/bin/env bash
# Real clients against a running confab (debug build) with a scripted upstream on loopback:
#   - schemathesis (PyPI) over /openapi.json: every operation, every check;
#   - the official openai Python SDK against /v1/chat/completions, whole and streamed;
#   - two people in one room in headless Chromium (Debian chromium + npm playwright-core),
#     screenshots saved under target/artifacts/ (or $ARTIFACTS).
# Installs what it needs into ~/.cache/confab/tools (and Debian's chromium when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${XDG_CACHE_HOME:-$HOME/.cache}/confab/tools"
mkdir -p "$tools"
venv="$tools/clients-venv"
if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  echo "installing schemathesis and openai (PyPI) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet schemathesis==4.32.5 openai==3.54.0
fi
node_dir="$tools/node"
if [ ! -d "$node_dir/node_modules/playwright-core" ]; then
  echo "installing playwright-core (npm) into $node_dir" >&2
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --no-audit --no-fund --prefix "$node_dir" playwright-core@1.65.1
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Debian)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) >/dev/null
  else
    echo "chromium not found: install Debian's chromium package" >&2
    exit 1
  fi
fi

cargo build --quiet --locked --bin confab
cargo build --quiet --locked -p confab-loadtest --bin mock-upstream
bin="${CARGO_TARGET_DIR:-target}/debug"
source scripts/lib/background.sh
mock_port=$(free_port)
port=$(free_port)
"$bin/mock-upstream" --port "$mock_port" --ttft-ms 50 --tokens-per-sec 25 \
  --text "Orchids are watered every Tuesday morning [1]." >"$work/mock.log" 2>&1 &
pids+=($!)
# A real tenant with two users' keys: every client below authenticates as one of them.
key_a=$("$bin/confab" key new --user alice | awk '/^key:/ {print $2}')
key_b=$("$bin/confab" key new --user bob | awk '/^key:/ {print $2}')
hash() { printf '%s\n' "$1" | "$bin/confab" key hash; }
cat >"$work/confab.toml" <<TOML
[server]
bind = "127.0.0.1:$port"
[auth.tenants.greenhouse]
keys = [{ user = "alice", sha256 = "$(hash "$key_a")" }, { user = "bob", sha256 = "$(hash "$key_b")" }]
[providers.mock]
kind = "openai"
base_url = "http://127.0.0.1:$mock_port/v1"
model = "mock-model"
[chains.default]
links = ["mock"]
[vector]
data_dir = "$work/data"
[log]
level = "warn"
TOML
"$bin/confab" serve --config "$work/confab.toml" >"$work/confab.log" 2>&1 &
pids+=($!)
url="http://127.0.0.1:$port"
wait_http "$url/readyz" || { cat "$work/confab.log"; exit 1; }

echo "== schemathesis (every operation but the endless SSE stream, every check)"
(cd tests/schemathesis && "$venv/bin/schemathesis" --config-file schemathesis.toml run "$url/openapi.json" \
  --checks all --max-examples 40 --request-timeout 30 --exclude-path '/v1/rooms/{room}/events' \
  --header "Authorization: Bearer $key_a" \
  --seed 20261122 2>&1 | tail -n 18)

echo "== openai Python SDK"
printf '# Greenhouse care\n\nOrchids in the east greenhouse are watered with rain water every Tuesday morning.\n' >"$work/greenhouse.md"
curl -fsS -H "Authorization: Bearer $key_a" -F "file=@$work/greenhouse.md" "$url/v1/documents?wait=true" >/dev/null
CONFAB_URL="$url" CONFAB_API_KEY="$key_b" MOCK_URL="http://127.0.0.1:$mock_port" \
  "$venv/bin/python" tests/clients/openai_sdk.py

echo "== headless Chromium: two participants"
artifacts="${ARTIFACTS:-${CARGO_TARGET_DIR:-target}/artifacts}"
mkdir -p "$artifacts"
CONFAB_URL="$url" CONFAB_KEYS="$key_a,$key_b" ARTIFACTS="$(cd "$artifacts" && pwd)" PLAYWRIGHT_CORE="$node_dir/node_modules/playwright-core" \
  timeout 180 node tests/browser/two_participants.mjs
echo "clients: all checks passed"
