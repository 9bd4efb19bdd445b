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
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
