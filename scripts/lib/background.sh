# Sourced by scripts that run servers in the background on loopback: a work dir, the pids to
# stop on exit (then wait for them: a server drains and flushes before its data dir goes),
# a free port, and waiting for a URL to answer.
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work" || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL: up to 60 s.
wait_http() {
  for _ in $(seq 1 600); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "not up: $1" >&2
  return 1
}
