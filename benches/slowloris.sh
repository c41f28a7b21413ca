#!/usr/bin/env bash
# Slowloris against the data plane: CONNS connections each sending one byte of a request head
# per second (and reconnecting when cut, as the attack does), while oha measures normal clients.
# Compares the normal clients' p99 with an unloaded run of the same gateway, and the gateway's
# RSS with the slow connections open against before (per connection). The gateway runs with
# its defaults (header_timeout_secs = 10, max_connections = 10000) on core 0; oha, the slow
# clients and the backend share core 1.
#
# The normal clients send RATE requests a second (16 connections), below what the machine can
# serve, so that their latency shows the gateway's delays rather than a saturated core.
#
# Needs: oha, python3, taskset. Usage: benches/slowloris.sh  (env: CONNS=2000 DURATION=10s RATE=2000 ROUNDS=3;
# PERF_OUT=file: perf record of the gateway, by the clock, during the first slowloris load)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-2000}
DURATION=${DURATION:-10s}
RATE=${RATE:-2000}
ROUNDS=${ROUNDS:-3}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need oha python3 taskset
ulimit -n $((CONNS + 4096)) 2>/dev/null || true

start_mock
GW=$(free_port); ADMIN=$(free_port)
start_gateway infergate "$GW" "$ADMIN" "memory://"; GW_PID=$STARTED
wait_port "$MOCK"; wait_port "$GW"; wait_port "$ADMIN"

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status"; }
load() { # name -> "p50_ms p99_ms rps"
  taskset -c 1 oha -z "$DURATION" -c 16 -q "$RATE" --no-tui --output-format json -m POST \
    -H 'content-type: application/json' -d "$BODY" "http://127.0.0.1:$GW/v1/chat/completions" >"$work/$1.json"
  python3 - "$work/$1.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
if set(codes) != {"200"}: print(f"answers: {codes}", file=sys.stderr); sys.exit(1)
l = d["latencyPercentiles"]
print(f"{l['p50']*1e3:.2f} {l['p99']*1e3:.2f} {d['summary']['requestsPerSec']:.0f}")
PY
}

DURATION=2s load warm >/dev/null
# The slow clients (benches/slowloris_client.rs): CONNS connections, one head byte per second
# each, reconnecting when cut.
cargo bench --bench slowloris_client --no-run 2>/dev/null
SLOW=$(ls -t target/release/deps/slowloris_client-* | grep -v '\.d$' | head -1)
# The control: the same slow clients aimed at a sink (a socket that listens and never accepts:
# the kernel completes and buffers their connections, no process wakes for their bytes), so
# what remains is what the slow clients cost the load generator's core, not the gateway.
SINK=$(free_port)
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096); time.sleep(86400)' "$SINK" &
pids+=($!)
wait_port "$SINK"
open_count() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk '/^infergate_client_connections / {print $2}'; }
: >"$work/rounds"
for r in $(seq "$ROUNDS"); do
  read -r u50 u99 urps <<<"$(load "unloaded-$r")"
  taskset -c 1 "$SLOW" "$SINK" "$CONNS" &
  slow=$!; pids+=($slow)
  sleep 3
  read -r k50 k99 krps <<<"$(load "sink-$r")"
  kill "$slow"; wait "$slow" 2>/dev/null || true
  before=$(rss_kib)
  taskset -c 1 "$SLOW" "$GW" "$CONNS" &
  slow=$!; pids+=($slow)
  # Wait until the slow connections are all open.
  for _ in $(seq 150); do
    open=$(open_count); [ "${open:-0}" -ge "$CONNS" ] && break; sleep 0.2
  done
  during=$(rss_kib)
  if [ -n "${PERF_OUT:-}" ] && [ "$r" = 1 ]; then
    # Where the gateway's CPU goes under slowloris (sampled by the clock: no hardware counters
    # needed).
    perf record -e cpu-clock -g -p "$GW_PID" -o "$PERF_OUT" -- sleep 8 >/dev/null 2>&1 &
  fi
  read -r s50 s99 srps <<<"$(load "slowloris-$r")"
  kill "$slow"; wait "$slow" 2>/dev/null || true
  for _ in $(seq 100); do [ "$(open_count)" -le 1 ] && break; sleep 0.1; done
  echo "$u50 $u99 $urps $s50 $s99 $srps $before $during ${open:-0} $k50 $k99" >>"$work/rounds"
done
timeouts=$(curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk '/^infergate_client_timeouts_total\{phase="head"\}/ {print $2}')

python3 - "$CONNS" "$work/rounds" "${timeouts:-0}" <<'PY'
import statistics, sys
conns, rounds, cut = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [list(map(float, l.split())) for l in open(rounds)]
med = [statistics.median(r[i] for r in rows) for i in range(11)]
u50, u99, urps, s50, s99, srps, before, during, opened, k50, k99 = med
print(f"slowloris: {conns} connections sending a head byte per second, each on its own phase "
      f"(open at once: {opened:.0f}); normal clients: 16 under oha at a fixed rate; "
      f"medians of {len(rows)} rounds")
print("| run | p50 ms | p99 ms | req/s |")
print("|---|---|---|---|")
print(f"| unloaded | {u50:.2f} | {u99:.2f} | {urps:.0f} |")
print(f"| slow clients aimed at a sink (control) | {k50:.2f} | {k99:.2f} | |")
print(f"| with slowloris | {s50:.2f} | {s99:.2f} | {srps:.0f} |")
print("p99 ratio per round: " + ", ".join(f"{r[4]/r[1]:.2f}x" for r in rows))
print(f"p99 with slowloris / unloaded: {s99/u99:.2f}x (goal <= 2x)")
print("control p99 / unloaded per round: " + ", ".join(f"{r[10]/r[1]:.2f}x" for r in rows))
print(f"control: {k99/u99:.2f}x (the slow clients' cost to the load generator's core alone)")
print(f"RSS: {before/1024:.1f} MiB before, {during/1024:.1f} MiB with the slow connections open: "
      f"{(during-before)/conns:.1f} KiB per connection (goal <= 64)")
print(f"heads cut at the header timeout: {cut}")
PY
