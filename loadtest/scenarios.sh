#!/usr/bin/env bash
# Benchmark scenarios on loopback (release builds; not part of CI except `smoke`).
#   bash loadtest/scenarios.sh delivery   upstream token → client delta latency, one room
#   bash loadtest/scenarios.sh overhead   same streamed requests straight to the mock and through
#                                         confab's OpenAI endpoint: added TTFT and per-token delay
#   bash loadtest/scenarios.sh tracing    overhead's load through confab with traces off and with
#                                         every turn traced to an OTLP receiver, same run
#   bash loadtest/scenarios.sh idle       10k idle WebSocket clients: server RSS per client
#   bash loadtest/scenarios.sh fanout     1k rooms × 10 clients streaming: delta events/s, p99
#   bash loadtest/scenarios.sh soak [S]   steady load for S seconds (600): RSS drift, errors
#   bash loadtest/scenarios.sh litellm    confab and LiteLLM proxy on the same mock, alternately
#   bash loadtest/scenarios.sh cluster    fanout on 1 node local, 1 node on Redis, 2 nodes on Redis
#                                         (each room's members spread over the nodes), same run
#   bash loadtest/scenarios.sh report     the README's figures: every scenario below it quotes,
#                                         rerun now; writes BENCHMARKS.md (about 20 minutes)
#   bash loadtest/scenarios.sh smoke      20-second run of the tools (CI)
# JSON summaries go to $OUT (default target/loadtest). Knobs: see the variables below.
# On a machine with cores to spare, CONFAB_CPUS and LOAD_CPUS (taskset lists, e.g. 0-3 and
# 4-7) pin confab and the load side (load tool and mock) to separate cores, so the load
# generator does not take the server's CPU and the figures are about confab alone.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$HOME/.cache/confab/target" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/confab/target"
fi
scenario="${1:?scenario}"
profile=release
[ "$scenario" = smoke ] && profile=debug
if [ "$profile" = release ]; then
  cargo build --release --locked --workspace --bins
else
  cargo build --locked --workspace --bins
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"
out="${OUT:-${CARGO_TARGET_DIR:-target}/loadtest}"
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
source scripts/lib/background.sh

# The scripted upstream: stamped tokens (text = send time in µs).
mock() { # tokens tokens_per_sec ttft_ms
  mock_port=$(free_port)
  ${LOAD_CPUS:+taskset -c "$LOAD_CPUS"} "$bin/mock-upstream" --port "$mock_port" --stamped --tokens "$1" --tokens-per-sec "$2" --ttft-ms "$3" >"$work/mock.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$mock_port/v1/models"
}

# confab on the mock: no retrieval, no answer cache (every request reaches the upstream).
# An argument is appended to the config (e.g. a [cluster] section); each call starts one more
# server and sets $port and $confab_pid to it.
confab() {
  port=$(free_port)
  local conf="$work/confab-$port.toml"
  cat >"$conf" <<TOML
[server]
bind = "127.0.0.1:$port"
[rooms]
max_rooms = 20000
max_rooms_per_tenant = 20000
max_members = 512
${COALESCE_MS:+coalesce_ms = $COALESCE_MS}
[providers.mock]
kind = "openai"
base_url = "http://127.0.0.1:$mock_port/v1"
model = "mock-model"
max_retries = 0
[chains.default]
links = ["mock"]
[retrieval]
enabled = false
[cache]
enabled = false
[auth]
dev_mode = true
[log]
level = "warn"
${1:-}
TOML
  ${CONFAB_CPUS:+taskset -c "$CONFAB_CPUS"} "$bin/confab" serve --config "$conf" >"$work/confab-$port.log" 2>&1 &
  confab_pid=$!
  pids+=($confab_pid)
  wait_http "http://127.0.0.1:$port/readyz"
}

load() { ${LOAD_CPUS:+taskset -c "$LOAD_CPUS"} "$bin/confab-load" "$@"; }

case "$scenario" in
  overhead)
    rate="${RATE:-20}"; tokens="${TOKENS:-100}"; tps="${TPS:-100}"; secs="${SECS:-30}"
    mock "$tokens" "$tps" 20
    confab
    echo "== direct to the mock: $rate streams/s × $tokens tokens at $tps tokens/s = $((rate * tps)) tokens/s in flight"
    load --json-out "$out/overhead-direct.json" openai --base "http://127.0.0.1:$mock_port/v1" --model mock-model --rate "$rate" --duration "$secs" >/dev/null
    echo "== through confab (/v1/chat/completions, chain [mock])"
    load --json-out "$out/overhead-confab.json" openai --base "http://127.0.0.1:$port/v1" --model default --rate "$rate" --duration "$secs" --pid "$confab_pid" >/dev/null
    python3 - "$out/overhead-direct.json" "$out/overhead-confab.json" <<'PY'
import json, sys
d, c = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{'':28}{'direct':>12}{'confab':>12}{'added':>12}")
for part, name in (("ttft", "first token"), ("per_token", "per token (stamp age)")):
    for q in ("p50_ms", "p99_ms"):
        a, b = d[part][q], c[part][q]
        print(f"{name + ' ' + q[:3]:28}{a:>10.3f}ms{b:>10.3f}ms{b - a:>10.3f}ms")
print(f"tokens/s {d['tokens_per_sec']:.0f} direct, {c['tokens_per_sec']:.0f} through confab; "
      f"errors {d['errors']} / {c['errors']}; confab used {c['server']['cpu_cores']:.2f} cores")
PY
    ;;
  tracing)
    # The receiver: PyPI oteltap (an OTLP/HTTP receiver made for tests), its output discarded.
    otel_venv="${XDG_CACHE_HOME:-$HOME/.cache}/confab/tools/otel-venv"
    if ! "$otel_venv/bin/python" -c "import oteltap" 2>/dev/null; then
      python3 -m venv "$otel_venv" && "$otel_venv/bin/pip" install --quiet oteltap==1.0.0
    fi
    otlp_port=$(free_port)
    "$otel_venv/bin/python" -m oteltap --port "$otlp_port" >/dev/null 2>&1 &
    pids+=($!)
    rate="${RATE:-20}"; tokens="${TOKENS:-100}"; tps="${TPS:-100}"; secs="${SECS:-30}"
    mock "$tokens" "$tps" 20
    confab
    off_port=$port; off_pid=$confab_pid
    confab "[telemetry]
otlp_endpoint = \"http://127.0.0.1:$otlp_port\"
sample_ratio = 1.0"
    on_port=$port; on_pid=$confab_pid
    for round in 1 2; do
      echo "== round $round: traces off"
      load --json-out "$out/tracing-off-$round.json" openai --base "http://127.0.0.1:$off_port/v1" --model default --rate "$rate" --duration "$secs" --pid "$off_pid" >/dev/null
      echo "== round $round: every turn traced"
      load --json-out "$out/tracing-on-$round.json" openai --base "http://127.0.0.1:$on_port/v1" --model default --rate "$rate" --duration "$secs" --pid "$on_pid" >/dev/null
    done
    scrape=$(curl -fsS "http://127.0.0.1:$on_port/metrics" | grep -E '^confab_trace_spans_(exported|dropped)_total' || true)
    python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'':8}{'ttft p50':>10}{'ttft p99':>10}{'tok p50':>10}{'tok p99':>10}{'tokens/s':>10}{'cores':>8}{'errors':>8}")
for mode in ("off", "on"):
    for r in (1, 2):
        c = json.load(open(f"{out}/tracing-{mode}-{r}.json"))
        print(f"{mode + ' ' + str(r):8}{c['ttft']['p50_ms']:>8.2f}ms{c['ttft']['p99_ms']:>8.2f}ms"
              f"{c['per_token']['p50_ms']:>8.2f}ms{c['per_token']['p99_ms']:>8.2f}ms"
              f"{c['tokens_per_sec']:>10.0f}{c['server']['cpu_cores']:>8.2f}{sum(c['errors'].values()):>8}")
PY
    echo "$scrape"
    ;;
  delivery)
    mock 200 200 0
    confab
    load --json-out "$out/delivery.json" delivery --url "ws://127.0.0.1:$port/v1/ws" --tokens "${TOKENS:-2000}" --clients "${CLIENTS:-2}"
    ;;
  idle)
    mock 10 10 0
    confab
    load --json-out "$out/idle.json" idle --url "ws://127.0.0.1:$port/v1/ws" --clients "${CLIENTS:-10000}" --rooms "${ROOMS:-1000}" --pid "$confab_pid"
    ;;
  fanout)
    mock "${TOKENS:-40}" "${TPS:-20}" 0
    confab
    load --threads "${LOAD_THREADS:-1}" --json-out "$out/fanout.json" fanout --url "ws://127.0.0.1:$port/v1/ws" --rooms "${ROOMS:-1000}" --per-room "${PER_ROOM:-10}" \
      --prompt-every-ms "${EVERY_MS:-3000}" --duration "${SECS:-30}" --pid "$confab_pid"
    ;;
  soak)
    mock "${TOKENS:-40}" "${TPS:-20}" 0
    confab
    load --json-out "$out/soak.json" fanout --url "ws://127.0.0.1:$port/v1/ws" --rooms "${ROOMS:-200}" --per-room "${PER_ROOM:-10}" \
      --prompt-every-ms "${EVERY_MS:-3000}" --duration "${2:-600}" --pid "$confab_pid" --sample-every 30
    ;;
  litellm)
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/confab/tools/litellm-venv"
    if [ ! -x "$venv/bin/litellm" ]; then
      echo "installing LiteLLM proxy (PyPI) into $venv" >&2
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet "litellm[proxy]==${LITELLM_VERSION:-1.106.2}"
    fi
    RATES="${RATES:-10 25 50 100 200 400}"
    mock "${TOKENS:-50}" "${TPS:-100}" 20
    confab
    lport=$(free_port)
    cat >"$work/litellm.yaml" <<YAML
model_list:
  - model_name: default
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:$mock_port/v1
      api_key: sk-mock
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  master_key: sk-load-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
YAML
    key=$(sed -n 's/^  master_key: //p' "$work/litellm.yaml")
    LITELLM_LOG=ERROR "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$lport" --num_workers 1 >"$work/litellm.log" 2>&1 &
    litellm_pid=$!
    pids+=($litellm_pid)
    wait_http "http://127.0.0.1:$lport/health/liveliness" || { tail -20 "$work/litellm.log"; exit 1; }
    # The proxy's worker is a child of the launcher: measure the busiest python process under it.
    lpid=$(pgrep -P "$litellm_pid" -f python | head -1 || true)
    lpid="${lpid:-$litellm_pid}"
    printf '%-8s %-8s %10s %10s %12s %12s %12s %8s %9s %8s\n' peer rate req/s tok/s "ttft p50" "ttft p99" "token p99" errors cores "RSS MiB"
    for rate in ${RATES//,/ }; do
      for peer in ${PEERS:-confab litellm}; do
        if [ "$peer" = confab ]; then base="http://127.0.0.1:$port/v1"; pid=$confab_pid; else base="http://127.0.0.1:$lport/v1"; pid=$lpid; fi
        load --json-out "$out/cmp-$peer-$rate.json" openai --base "$base" --model default --rate "$rate" --duration "${SECS:-20}" --pid "$pid" --api-key "$key" >/dev/null 2>&1 || true
        python3 - "$out/cmp-$peer-$rate.json" "$peer" "$rate" <<'PY'
import json, sys
r, peer, rate = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
s = r.get("server") or {}
print(f"{peer:<8} {rate:<8} {r['req_per_sec']:>10.1f} {r['tokens_per_sec']:>10.0f} {r['ttft']['p50_ms']:>10.1f}ms {r['ttft']['p99_ms']:>10.1f}ms "
      f"{r['per_token']['p99_ms']:>10.1f}ms {sum(r['errors'].values()):>8} {s.get('cpu_cores', 0):>9.2f} {s.get('rss_end_mib', 0):>8.0f}")
PY
        sleep 2
      done
    done
    ;;
  cluster)
    mock "${TOKENS:-40}" "${TPS:-20}" 0
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
    redis_pid=$!
    pids+=($redis_pid)
    for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    on_redis="[cluster]
backend = \"redis\"
redis_url = \"redis://127.0.0.1:$rport\""
    fan() { # name urls pids
      load --json-out "$out/cluster-$1.json" fanout --urls "$2" --pid "$3" --rooms "${ROOMS:-1000}" \
        --per-room "${PER_ROOM:-10}" --prompt-every-ms "${EVERY_MS:-3000}" --duration "${SECS:-30}"
    }
    stop() { for p in "$@"; do kill "$p"; wait "$p" 2>/dev/null || true; done; }
    echo "== 1 node, local"
    confab; fan local "ws://127.0.0.1:$port/v1/ws" "$confab_pid"; stop "$confab_pid"
    echo "== 1 node, redis"
    # With Redis, the CPU and RSS figures are the nodes' and Redis's together.
    confab "$on_redis"; fan redis1 "ws://127.0.0.1:$port/v1/ws" "$confab_pid,$redis_pid"; stop "$confab_pid"
    redis-cli -p "$rport" flushall >/dev/null
    echo "== 2 nodes, redis (every room has members on both)"
    confab "$on_redis"; a_port=$port; a_pid=$confab_pid
    confab "$on_redis"
    fan redis2 "ws://127.0.0.1:$a_port/v1/ws,ws://127.0.0.1:$port/v1/ws" "$a_pid,$confab_pid,$redis_pid"
    python3 - "$out" <<'PY'
import json, sys
o = sys.argv[1]
print("(cores and RSS: confab and, with Redis, redis-server together)")
print(f"{'':18}{'delta ev/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'turns':>8}{'errors':>8}{'cores':>7}{'RSS MiB':>9}")
for name, label in (("local", "1 node, local"), ("redis1", "1 node, redis"), ("redis2", "2 nodes, redis")):
    r = json.load(open(f"{o}/cluster-{name}.json"))
    d, s = r["delivery"], r["server"] or {}
    print(f"{label:18}{r['delta_events_per_sec']:>12.0f}{d['p50_ms']:>9.1f}{d['p99_ms']:>9.1f}{r['turns']:>8}"
          f"{sum(r['errors'].values()):>8}{s.get('cpu_cores', 0):>7.2f}{s.get('rss_end_mib', 0):>9.0f}")
PY
    ;;
  report)
    # Each run is this script again, with its knobs; report.py renders what they wrote.
    runs="$out/report"
    rm -rf "$runs" && mkdir -p "$runs"
    # The code measured; a tree with uncommitted changes says so.
    { git rev-parse --short HEAD; git diff --quiet HEAD -- src loadtest || echo "(with uncommitted changes)"; } | paste -sd' ' >"$runs/commit"
    pin="${CONFAB_CPUS:+confab on cores $CONFAB_CPUS}"
    pin="${pin}${LOAD_CPUS:+${pin:+; }the load tool and the mock on cores $LOAD_CPUS}"
    echo "$pin" >"$runs/pinning"
    sub() { # name, knobs (VAR=value words, or ""), then the scenario and its arguments
      local name=$1 knobs=$2; shift 2
      echo "== $name: $knobs bash loadtest/scenarios.sh $*"
      printf '%s\t%s\n' "$name" "${knobs:+$knobs }bash loadtest/scenarios.sh $*" >>"$runs/index.tsv"
      # shellcheck disable=SC2086 # the knobs are words on purpose
      env OUT="$runs/$name" $knobs bash "$0" "$@" >"$runs/$name.log" 2>&1 || { tail -20 "$runs/$name.log"; exit 1; }
    }
    sub delivery "" delivery
    sub delivery-off "COALESCE_MS=0" delivery
    sub overhead "" overhead
    sub idle "" idle
    sub fanout-300 "ROOMS=300" fanout
    sub fanout-1000 "" fanout
    sub fanout-1000-off "COALESCE_MS=0" fanout
    sub fanout-1000-fast "TPS=100" fanout
    sub fanout-1000-fast-off "TPS=100 COALESCE_MS=0" fanout
    sub soak "" soak "${SOAK_SECS:-120}"
    sub tracing "RATE=100" tracing
    sub cluster "" cluster
    sub litellm "RATES=25,100" litellm
    python3 loadtest/report.py "$runs" BENCHMARKS.md
    echo "wrote BENCHMARKS.md"
    ;;
  smoke)
    mock 20 200 0
    confab
    load --json-out "$out/smoke-openai.json" openai --base "http://127.0.0.1:$port/v1" --model default --rate 5 --duration 8 --pid "$confab_pid"
    load --json-out "$out/smoke-fanout.json" fanout --url "ws://127.0.0.1:$port/v1/ws" --rooms 10 --per-room 3 --prompt-every-ms 500 --duration 8 --pid "$confab_pid"
    load --json-out "$out/smoke-idle.json" idle --url "ws://127.0.0.1:$port/v1/ws" --clients 200 --rooms 20 --pid "$confab_pid" --hold 1
    python3 - "$out" <<'PY'
import json, sys
o = sys.argv[1]
a, f, i = (json.load(open(f"{o}/smoke-{n}.json")) for n in ("openai", "fanout", "idle"))
assert a["ok"] == a["requests"] and not a["errors"], a
assert a["ttft"]["count"] == a["ok"] and a["per_token"]["count"] > 0, a
assert f["delta_events_per_sec"] > 0 and f["delivery"]["count"] > 0 and not f["errors"] and f["disconnects"] == 0, f
assert i["closed"] == 0 and i["rss_per_client_kib"] > 0, i
print("load smoke: ok")
PY
    ;;
  *)
    echo "unknown scenario $scenario" >&2
    exit 2
    ;;
esac
