#!/usr/bin/env bash
# promtool checks: the SLO rules parse, their unit tests pass (alerts fire and don't fire),
# and every Grafana panel query is valid PromQL. Installs Debian's prometheus (promtool) when
# missing and this runs as root; otherwise says what is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null
  else
    echo "promtool not found: install Debian's prometheus package" >&2
    exit 1
  fi
fi
promtool check rules prometheus/rules.yml
(cd prometheus && promtool test rules rules_test.yml)

# Dashboard queries as throwaway recording rules, Grafana variables substituted.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/dashboards.rules.yml" dashboards/*.json <<'PY'
import json, sys
out, files = sys.argv[1], sys.argv[2:]
rules = []
for f in files:
    for p in json.load(open(f))["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
            rules.append({"record": f"dashboard:check:{len(rules)}", "expr": expr})
json.dump({"groups": [{"name": "dashboards", "rules": rules}]}, open(out, "w"))
print(f"{len(rules)} dashboard queries from {len(files)} dashboards")
PY
promtool check rules "$tmp/dashboards.rules.yml"
