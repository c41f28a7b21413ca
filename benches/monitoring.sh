#!/usr/bin/env bash
# How fast the system-monitoring endpoints answer with a fleet to watch: one infergate (core 0,
# one worker) routing the bench mock and 50 idle mock servers, all scraped every 5 s, after a
# short load so the throughput windows hold requests. Each endpoint is asked REQUESTS times, one
# at a time, under oha; reports p50/p99 latency per endpoint, and the longest scrape of the run.
# With WITH_VALKEY=1 the gateway's store is a local redis-server (Valkey protocol).
#
# Needs: oha, python3, taskset, curl (and redis-server with WITH_VALKEY=1).
# Usage: benches/monitoring.sh  (env: FLEET=50 REQUESTS=300 WITH_VALKEY=0)
set -euo pipefail
cd "$(dirname "$0")/.."
FLEET_SIZE=${FLEET:-50}
REQUESTS=${REQUESTS:-300}
WITH_VALKEY=${WITH_VALKEY:-0}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need oha python3 taskset curl

start_mock
start_fleet "$FLEET_SIZE"
STORE="memory://"
if [ "$WITH_VALKEY" = 1 ]; then
  need redis-server
  VK=$(free_port)
  taskset -c 1 redis-server --port "$VK" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  pids+=($!)
  wait_port "$VK"
  STORE="redis://127.0.0.1:$VK/"
fi
GW=$(free_port); ADMIN=$(free_port)
{ gateway_config "$GW" "$ADMIN" "$STORE"; fleet_servers; } >"$work/gw.toml"
INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
  taskset -c 0 "$BIN" serve --config "$work/gw.toml" 2>"$work/gw.log" &
pids+=($!)
wait_port "$MOCK"; wait_port "$ADMIN"; wait_port "$GW"
taskset -c 1 oha -z 5s -c 16 --no-tui -m POST -H 'content-type: application/json' -d "$BODY" \
  "http://127.0.0.1:$GW/v1/chat/completions" >/dev/null
sleep 11 # two scrape rounds of every server, and samples after the load

echo "system endpoints, $((FLEET_SIZE + 1)) servers scraped every 5 s, store $STORE, $REQUESTS sequential requests each (ms)"
echo "| endpoint | p50 | p99 | slowest |"
echo "|---|---|---|---|"
for p in $SYSTEM_PATHS; do
  taskset -c 1 oha -n "$REQUESTS" -c 1 --no-tui --output-format json \
    -H 'Authorization: Bearer bench:bench-secret' "http://127.0.0.1:$ADMIN/admin/$p" >"$work/p.json"
  python3 - "$work/p.json" "$p" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
if set(codes) != {"200"}: print(f"{sys.argv[2]}: {codes}", file=sys.stderr); sys.exit(1)
l = d["latencyPercentiles"]
print(f"| /admin/{sys.argv[2]} | {l['p50']*1e3:.2f} | {l['p99']*1e3:.2f} | {d['summary']['slowest']*1e3:.2f} |")
PY
done
curl -sf "http://127.0.0.1:$ADMIN/metrics" | python3 -c '
import sys
up = [l for l in sys.stdin.read().splitlines() if l.startswith("infergate_engine_scrape")]
ok = sum(1 for l in up if l.startswith("infergate_engine_scrape_up") and l.endswith(" 1"))
took = [float(l.split()[-1]) for l in up if l.startswith("infergate_engine_scrape_duration_seconds")]
print(f"servers scraped: {ok}; longest last scrape: {max(took)*1e3:.1f} ms")'
