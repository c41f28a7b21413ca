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
# Needs: oha, python3, taskset. Usage: benches/slowloris.sh  (env: CONNS=2000 DURATION=10s RATE=2000 ROUNDS=3)
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
# The slow clients: CONNS connections, one head byte per second each, reconnecting when cut.
cat >"$work/slowloris.py" <<'PY'
import asyncio, random, sys
port, conns = int(sys.argv[1]), int(sys.argv[2])
head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + b"x-padding: " + b"a" * 4000 + b"\r\n")
cut = 0
async def one():
    global cut
    while True:
        try:
            # Each connection on its own phase within the second (attack tools start them
            # one after another).
            await asyncio.sleep(random.random())
            r, w = await asyncio.open_connection("127.0.0.1", port)
            for b in head:
                w.write(bytes([b])); await w.drain()
                await asyncio.sleep(1)
                if r.at_eof() or len(r._buffer):
                    break
            cut += 1
            w.close()
        except OSError:
            await asyncio.sleep(0.1)
async def main():
    for i in range(conns):
        asyncio.ensure_future(one())
        if i % 100 == 99: await asyncio.sleep(0.05)
    await asyncio.sleep(3600)
asyncio.run(main())
PY
open_count() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk '/^infergate_client_connections / {print $2}'; }
: >"$work/rounds"
for r in $(seq "$ROUNDS"); do
  read -r u50 u99 urps <<<"$(load "unloaded-$r")"
  before=$(rss_kib)
  taskset -c 1 python3 "$work/slowloris.py" "$GW" "$CONNS" &
  slow=$!; pids+=($slow)
  # Wait until the slow connections are all open.
  for _ in $(seq 150); do
    open=$(open_count); [ "${open:-0}" -ge "$CONNS" ] && break; sleep 0.2
  done
  during=$(rss_kib)
  read -r s50 s99 srps <<<"$(load "slowloris-$r")"
  kill "$slow"; wait "$slow" 2>/dev/null || true
  for _ in $(seq 100); do [ "$(open_count)" -le 1 ] && break; sleep 0.1; done
  echo "$u50 $u99 $urps $s50 $s99 $srps $before $during ${open:-0}" >>"$work/rounds"
done
timeouts=$(curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk '/^infergate_client_timeouts_total\{phase="head"\}/ {print $2}')

python3 - "$CONNS" "$work/rounds" "${timeouts:-0}" <<'PY'
import statistics, sys
conns, rounds, cut = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [list(map(float, l.split())) for l in open(rounds)]
med = [statistics.median(r[i] for r in rows) for i in range(9)]
u50, u99, urps, s50, s99, srps, before, during, opened = med
print(f"slowloris: {conns} connections sending a head byte per second, each on its own phase "
      f"(open at once: {opened:.0f}); normal clients: 16 under oha at a fixed rate; "
      f"medians of {len(rows)} rounds")
print("| run | p50 ms | p99 ms | req/s |")
print("|---|---|---|---|")
print(f"| unloaded | {u50:.2f} | {u99:.2f} | {urps:.0f} |")
print(f"| with slowloris | {s50:.2f} | {s99:.2f} | {srps:.0f} |")
print("p99 ratio per round: " + ", ".join(f"{r[4]/r[1]:.2f}x" for r in rows))
print(f"p99 with slowloris / unloaded: {s99/u99:.2f}x (goal <= 2x)")
print(f"RSS: {before/1024:.1f} MiB before, {during/1024:.1f} MiB with the slow connections open: "
      f"{(during-before)/conns:.1f} KiB per connection (goal <= 64)")
print(f"heads cut at the header timeout: {cut}")
PY
