#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: the figure to
# compare builds with on machines where `perf stat` has no hardware counters
# (benches/instructions.sh needs them). Callgrind counts instructions rather than time, so a
# figure repeats to a fraction of a percent whatever else the machine is doing.
#
# Each target runs under callgrind in turn, alone on the machine but for the mock backend:
# infergate with one worker thread, health probes and monitoring once an hour, nginx with one
# process. It takes
# WARMUP requests, its counters are zeroed, it serves REQUESTS issue-2 requests (non-streaming
# chat completions with a 16-token answer, over CONNS keep-alive connections, sent by a Python
# client), and its counters are dumped: the figure is every thread of the process divided by
# REQUESTS. Kernel instructions are not counted (callgrind sees user space only).
#
# Targets: target/release/infergate, nginx, and with BASE=path/to/another/infergate that build
# too (e.g. one built from an older commit), each ROUNDS times, alternating.
#
# Needs: valgrind (callgrind_control), nginx, python3, curl.
# Usage: benches/callgrind.sh      (env: REQUESTS=10000 CONNS=16 WARMUP=1000 ROUNDS=1 BASE= KEEP=dir)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-10000}
CONNS=${CONNS:-16}
WARMUP=${WARMUP:-1000}
ROUNDS=${ROUNDS:-1}
BASE=${BASE:-}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need valgrind callgrind_control nginx python3 curl

start_mock
wait_port "$MOCK"

# The load: $2 requests to port $1 over CONNS connections; fails on any answer but 200.
cat >"$work/load.py" <<'PY'
import http.client, sys, threading
port, total, conns, body = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
bad = []
def run(n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(n):
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            bad.append(r.status)
threads = [threading.Thread(target=run, args=(total // conns + (i < total % conns),)) for i in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
if bad:
    sys.exit(f"non-200 answers: {sorted(set(bad))}")
PY
load() { python3 "$work/load.py" "$1" "$2" "$CONNS" "$BODY"; }

# Run one target under callgrind: measure NAME PORT COMMAND...; appends "NAME instructions" to
# the results.
measure() {
  local name=$1 port=$2; shift 2
  local out="$work/cg-$name"
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@" 2>"$work/$name-valgrind.log" &
  local pid=$!; pids+=($pid)
  wait_port "$port" 600 # valgrind starts slowly
  load "$port" "$WARMUP"
  callgrind_control -z "$pid" >/dev/null 2>&1
  load "$port" "$REQUESTS"
  callgrind_control -d "$pid" >/dev/null 2>&1
  local dump
  dump=$(ls -t "$out.$pid".* | head -1)
  # KEEP=dir: the dumps are kept there, for callgrind_annotate.
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$dump" "$KEEP/$name.callgrind"; fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  python3 - "$name" "$dump" "$REQUESTS" >>"$work/results" <<'PY'
import sys
name, dump, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
total = next(int(l.split()[1]) for l in open(dump) if l.startswith(("totals:", "summary:")))
print(name, total / n)
PY
}

gateway() { # NAME BINARY: runs the gateway under callgrind
  local port admin
  port=$(free_port); admin=$(free_port)
  # Periodic background work (health probes, monitoring samples and scrapes) once an hour: the
  # figure is the request path's.
  { gateway_config "$port" "$admin" "memory://"; printf '[health]\ninterval_ms = 3600000\n[monitoring]\nsample_interval_secs = 3600\nscrape_interval_secs = 3600\n'; } >"$work/$1.toml"
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    measure "$1" "$port" "$2" serve --config "$work/$1.toml"
}

nginx_target() {
  nginx_config
  measure nginx "$NGX" nginx -c "$work/nginx.conf" -p "$work/nginx" -g 'master_process off;'
}

: >"$work/results"
for _ in $(seq "$ROUNDS"); do
  gateway infergate "$BIN"
  [ -n "$BASE" ] && gateway infergate-base "$BASE"
  nginx_target
done
python3 - "$work/results" "$REQUESTS" "$CONNS" "$ROUNDS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, v = line.split()
    rows.setdefault(name, []).append(float(v))
print(f"user-space instructions per proxied request (callgrind), {sys.argv[2]} requests over "
      f"{sys.argv[3]} connections, median of {sys.argv[4]} round(s)")
print("| target | instructions | vs nginx | every round |")
print("|---|---|---|---|")
med = {n: statistics.median(v) for n, v in rows.items()}
for name in ("nginx", "infergate-base", "infergate"):
    if name in med:
        runs = ", ".join(f"{v:,.0f}" for v in rows[name])
        print(f"| {name} | {med[name]:,.0f} | {med[name] / med['nginx']:.3f}x | {runs} |")
if "infergate-base" in med:
    print(f"infergate vs infergate-base: {med['infergate'] / med['infergate-base']:.4f}x")
PY
