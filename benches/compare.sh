#!/usr/bin/env bash
# Side-by-side throughput and latency: direct to the mock backend, through nginx, through
# infergate, under oha in one run. The proxies are pinned to core 0 with one worker; oha and the
# backend share core 1. Reports medians of ROUNDS alternating rounds and ratios to nginx, then
# streaming TTFT (direct vs infergate) and infergate's RSS with 1,000 idle keep-alive clients.
#
# Needs: oha (cargo install oha), nginx (apt-get install nginx-light), python3, taskset.
# With WITH_VALKEY=1 a second infergate shares state through a local redis-server (Valkey
# protocol) and the Valkey commands per proxied request are reported. With WITH_AUTH=1 another
# infergate requires an API key (sent by oha) and records usage, compared with the plain one
# (keys and usage off). With WITH_MANAGED=1 another infergate also runs ten managed models (mock
# engines started through the admin API, all running) and is compared with the plain one. With
# WITH_MONITORING=1 another infergate also routes 50 idle mock servers, scrapes all 51 every 5 s
# (the default interval) while a dashboard polls its system endpoints every second, and is
# compared with the plain one (which scrapes its one server). With WITH_PREFIX=1 another
# infergate routes by `[routing] policy = "prefix"` (each body's prompt hashed and looked up,
# each request recorded) and is compared with the plain one (affinity).
# Usage: benches/compare.sh  (env: DURATION=10s CONNS=64 ROUNDS=3 WITH_VALKEY=0 WITH_AUTH=0
# WITH_MANAGED=0 WITH_MONITORING=0 WITH_PREFIX=0)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
WITH_VALKEY=${WITH_VALKEY:-0}
WITH_AUTH=${WITH_AUTH:-0}
WITH_MANAGED=${WITH_MANAGED:-0}
WITH_MONITORING=${WITH_MONITORING:-0}
WITH_PREFIX=${WITH_PREFIX:-0}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need oha nginx python3 taskset curl

start_mock
GW=$(free_port); ADMIN=$(free_port)
start_gateway infergate "$GW" "$ADMIN" "memory://"; GW_PID=$STARTED
extra_targets=""
if [ "$WITH_VALKEY" = 1 ]; then
  need redis-server
  VK=$(free_port); GWV=$(free_port); ADMINV=$(free_port)
  taskset -c 1 redis-server --port "$VK" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  pids+=($!)
  wait_port "$VK"
  start_gateway infergate-valkey "$GWV" "$ADMINV" "redis://127.0.0.1:$VK/"; GWV_PID=$STARTED
  wait_port "$GWV"
  extra_targets="infergate-valkey:$GWV:$GWV_PID"
fi
AUTH_TOKEN=""
if [ "$WITH_AUTH" = 1 ]; then
  start_keyed_gateway
  extra_targets="$extra_targets infergate-auth:$GWA:$GWA_PID"
fi
if [ "$WITH_MANAGED" = 1 ]; then
  GWM=$(free_port); ADMINM=$(free_port)
  start_managed_gateway infergate-managed "$GWM" "$ADMINM"; GWM_PID=$STARTED
  wait_port "$ADMINM"; wait_port "$GWM"
  start_managed_models "$ADMINM" 10
  extra_targets="$extra_targets infergate-managed:$GWM:$GWM_PID"
fi
if [ "$WITH_MONITORING" = 1 ]; then
  start_fleet 50
  GWO=$(free_port); ADMINO=$(free_port)
  { gateway_config "$GWO" "$ADMINO" "memory://"; fleet_servers; } >"$work/infergate-monitored.toml"
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    taskset -c 0 "$BIN" serve --config "$work/infergate-monitored.toml" 2>"$work/infergate-monitored.log" &
  GWO_PID=$!; pids+=($GWO_PID)
  wait_port "$ADMINO"; wait_port "$GWO"
  # A dashboard: every system endpoint once a second (on core 1, with oha and the backends).
  taskset -c 1 bash -c "$(declare -p SYSTEM_PATHS); $(declare -f poll_dashboard); poll_dashboard $ADMINO" &
  pids+=($!)
  extra_targets="$extra_targets infergate-monitored:$GWO:$GWO_PID"
fi
if [ "$WITH_PREFIX" = 1 ]; then
  GWP=$(free_port); ADMINP=$(free_port)
  { gateway_config "$GWP" "$ADMINP" "memory://"; printf '[routing]\npolicy = "prefix"\n'; } >"$work/infergate-prefix.toml"
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    taskset -c 0 "$BIN" serve --config "$work/infergate-prefix.toml" 2>"$work/infergate-prefix.log" &
  GWP_PID=$!; pids+=($GWP_PID)
  wait_port "$ADMINP"; wait_port "$GWP"
  extra_targets="$extra_targets infergate-prefix:$GWP:$GWP_PID"
fi
start_nginx
wait_port "$MOCK"; wait_port "$GW"; sleep 0.5
targets="direct:$MOCK: nginx:$NGX:$NGX_PID infergate:$GW:$GW_PID $extra_targets"
cpu_ticks() { [ -n "$1" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }

run() { # name port [pid] -> "rps p50_ms p99_ms cpu_us_per_request"
  local t0; t0=$(cpu_ticks "${3:-}")
  local auth=()
  case "$1" in infergate-auth*) auth=(-H "Authorization: Bearer $AUTH_TOKEN");; esac
  taskset -c 1 oha -z "$DURATION" -c "$CONNS" --no-tui --output-format json -m POST \
    -H 'content-type: application/json' "${auth[@]}" -d "$BODY" "http://127.0.0.1:$2/v1/chat/completions" >"$work/$1.json"
  local t1; t1=$(cpu_ticks "${3:-}")
  python3 - "$work/$1.json" "$((t1 - t0))" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
bad = sum(v for k, v in codes.items() if k != "200")
if bad: print(f"non-200 answers: {codes}", file=sys.stderr); sys.exit(1)
total = sum(codes.values())
cpu_us = int(sys.argv[2]) * 10_000 / total  # clock ticks of 10 ms
print(d["summary"]["requestsPerSec"], d["latencyPercentiles"]["p50"] * 1e3, d["latencyPercentiles"]["p99"] * 1e3, cpu_us)
PY
}

# Warm-up, then alternate.
DURATION=2s run warm-direct "$MOCK" >/dev/null; DURATION=2s run warm-nginx "$NGX" >/dev/null; DURATION=2s run warm-gw "$GW" >/dev/null
if [ "$WITH_AUTH" = 1 ]; then DURATION=2s run infergate-auth-warm "$GWA" "$GWA_PID" >/dev/null; fi
if [ "$WITH_MANAGED" = 1 ]; then DURATION=2s run infergate-managed-warm "$GWM" "$GWM_PID" >/dev/null; fi
if [ "$WITH_MONITORING" = 1 ]; then DURATION=2s run infergate-monitored-warm "$GWO" "$GWO_PID" >/dev/null; fi
if [ "$WITH_PREFIX" = 1 ]; then DURATION=2s run infergate-prefix-warm "$GWP" "$GWP_PID" >/dev/null; fi
: >"$work/results"
for r in $(seq "$ROUNDS"); do
  # Alternate the order from round to round, so that no target always runs last.
  order=$targets
  if [ $((r % 2)) -eq 0 ]; then order=$(echo "$targets" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for target in $order; do
    IFS=: read -r name port pid <<<"$target"
    echo "$name $(run "$name-$r" "$port" "$pid")" >>"$work/results"
  done
done

python3 - "$work/results" "$DURATION" "$CONNS" "$ROUNDS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, cpu = line.split()
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), float(cpu)))
med = {n: tuple(statistics.median(x[i] for x in v) for i in range(4)) for n, v in rows.items()}
print(f"non-streaming chat, 16 tokens, {sys.argv[3]} connections, {sys.argv[2]} x {sys.argv[4]} rounds (medians)")
print("| target | req/s | p50 ms | p99 ms | proxy CPU us/req | req/s vs nginx | p99 vs nginx |")
print("|---|---|---|---|---|---|---|")
n = med["nginx"]
for name in ("direct", "nginx", "infergate", "infergate-valkey", "infergate-auth", "infergate-managed", "infergate-monitored", "infergate-prefix"):
    if name not in med: continue
    r = med[name]
    cpu = f"{r[3]:.1f}" if name != "direct" else "-"
    print(f"| {name} | {r[0]:.0f} | {r[1]:.2f} | {r[2]:.2f} | {cpu} | {r[0]/n[0]:.2f}x | {r[2]/n[2]:.2f}x |")
PY

# ratio TARGET LABEL: TARGET's median req/s and p99 against the plain infergate's.
ratio() {
  python3 - "$work/results" "$1" "$2" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, cpu = line.split()
    rows.setdefault(name, []).append((float(rps), float(p99)))
m = {n: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for n, v in rows.items()}
e, x = m["infergate"], m[sys.argv[2]]
print(f"{sys.argv[3]}: req/s {x[0]/e[0]:.2f}x, p99 {x[1]/e[1]:.2f}x")
PY
}

if [ "$WITH_AUTH" = 1 ]; then
  ratio infergate-auth "keys required + usage recorded vs both off"
  recorded=$(curl -sf "http://127.0.0.1:$ADMINA/admin/usage?limit=1&from=0" -H 'Authorization: Bearer bench:bench-secret' | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' || echo "?")
  served=$(python3 -c "import json,glob; print(sum(sum(json.load(open(f)).get('statusCodeDistribution',{}).values()) for f in glob.glob('$work/infergate-auth-*.json')))")
  echo "usage records written by the keyed gateway: $recorded (requests it answered, warm-up included: $served)"
fi

if [ "$WITH_MANAGED" = 1 ]; then
  ratio infergate-managed "ten managed models running vs none"
fi

if [ "$WITH_MONITORING" = 1 ]; then
  ratio infergate-monitored "51 servers scraped every 5 s and a dashboard polling vs 1 server"
  scraped=$(curl -sf "http://127.0.0.1:$ADMINO/metrics" | grep -c '^infergate_engine_scrape_up{.*} 1' || true)
  echo "servers the monitored gateway scraped successfully at the end: $scraped"
fi

if [ "$WITH_PREFIX" = 1 ]; then
  ratio infergate-prefix "policy prefix vs affinity"
  curl -sf "http://127.0.0.1:$ADMINP/admin/routing" -H 'Authorization: Bearer bench:bench-secret' | python3 -c 'import json,sys; m=json.load(sys.stdin)["models"][0]; print("prefix index after the run:", m["policy"], {k: m["index"][k] for k in ("blocks","entries","evicted")})'
fi

if [ "$WITH_VALKEY" = 1 ]; then
  ratio infergate-valkey "valkey store vs embedded store"
  cmds=$(redis-cli -p "$VK" INFO stats | awk -F: '/total_commands_processed/ {print $2}' | tr -d '\r')
  served=$(awk '$1=="infergate-valkey"' "$work/results" | wc -l)
  total=$(python3 -c "import json,glob; print(sum(sum(json.load(open(f)).get('statusCodeDistribution',{}).values()) for f in glob.glob('$work/infergate-valkey-*.json')))")
  python3 -c "print(f'valkey commands per proxied request: {int($cmds)/max(1,$total):.5f} ($cmds commands, $total requests, whole run incl. idle time)')"
fi

# Streaming TTFT: direct vs through the gateway (sequential requests).
ttft() { cargo bench -q --bench ttft -- "http://127.0.0.1:$1" bench 500 2>/dev/null | tail -1; }
D=$(taskset -c 1 bash -c "$(declare -f ttft); ttft $MOCK")
G=$(taskset -c 1 bash -c "$(declare -f ttft); ttft $GW")
python3 - "$D" "$G" <<'PY'
import json, sys
d, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print()
print("streaming TTFT, 500 sequential requests")
print("| target | p50 ms | p90 ms | p99 ms |")
print("|---|---|---|---|")
for name, x in (("direct", d), ("infergate", g)):
    print(f"| {name} | {x['p50_ms']:.3f} | {x['p90_ms']:.3f} | {x['p99_ms']:.3f} |")
print(f"TTFT overhead at p50: {g['p50_ms'] - d['p50_ms']:.3f} ms")
PY

# RSS with 1,000 idle keep-alive clients.
python3 - "$GW" "$GW_PID" <<'PY'
import socket, sys, time
port, pid = int(sys.argv[1]), sys.argv[2]
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1]) / 1024
before = rss()
socks = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
for s in socks:
    s.recv(4096)
time.sleep(1)
print()
print(f"RSS: {before:.1f} MiB after the load runs, {rss():.1f} MiB with 1,000 idle keep-alive clients")
PY
