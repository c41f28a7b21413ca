#!/usr/bin/env bash
# A binary upgrade (EVENT=upgrade, the default) or a configuration reload (EVENT=reload: the
# server list changes, then SIGHUP) under the issue-2 load (oha, keep-alive, non-streaming):
# EVENT_AT seconds into the run, `infergate upgrade` hands the sockets to a new process and
# the old one drains, or the gateway re-reads its file. Reports, from every request's own timing (oha's CSV), the steady state before the
# event against the 10 s around it: req/s averaged over the window and p99 latency; and the
# failures (connection errors and non-200 answers) over the whole run. Both gateways run on
# core 0 with one worker, oha and the mock on core 1.
#
# Goal (issue 15): p99 around the event <= 2x steady, req/s dips by < 10%, zero failures.
# Needs: oha, python3, taskset. Usage: benches/upgrade.sh  (env: ROUNDS=3 DURATION=30 EVENT_AT=12 CONNS=50)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
EVENT=${EVENT:-upgrade}
DURATION=${DURATION:-30}
EVENT_AT=${EVENT_AT:-12}
CONNS=${CONNS:-50}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need oha python3 taskset curl
start_mock
wait_port "$MOCK"

for round in $(seq "$ROUNDS"); do
  GW=$(free_port); ADMIN=$(free_port)
  gateway_config "$GW" "$ADMIN" "memory://" >"$work/gw.toml"
  # The proxy table gets the socket (a second [proxy] table would be an error).
  python3 - "$work/gw.toml" "$work" <<'PY'
import sys
p, work = sys.argv[1], sys.argv[2]
s = open(p).read().replace("[proxy]\n", f'[proxy]\nupgrade_sock = "{work}/upgrade.sock"\n', 1)
open(p, "w").write(s)
PY
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    taskset -c 0 "$BIN" serve --config "$work/gw.toml" 2>"$work/old-$round.log" &
  OLD=$!; pids+=($OLD)
  wait_port "$ADMIN"; wait_port "$GW"; sleep 0.5
  oha_run() { # conns format out
    taskset -c 1 oha -z "${DURATION}s" -c "$1" --no-tui --output-format "$2" -o "$3" -m POST \
      -H 'content-type: application/json' -d "$BODY" "http://127.0.0.1:$GW/v1/chat/completions"
  }
  # Half the connections report every request (CSV: successes only), half count failures (JSON).
  oha_run $((CONNS / 2)) csv "$work/series.csv" & A=$!
  oha_run $((CONNS - CONNS / 2)) json "$work/summary.json" & B=$!
  start=$(date +%s.%N)
  sleep "$EVENT_AT"
  event=$(python3 -c "import time; print(time.time() - $start)")
  if [ "$EVENT" = reload ]; then
    # The same mock under a second name: a new server in the pool.
    printf '[[servers]]\nurl = "http://localhost:%s/v1"\nprovider = "vllm"\nmodels = ["bench"]\n' "$MOCK" >>"$work/gw.toml"
    kill -HUP "$OLD"; NEW=$OLD
  else
    NEW=$(INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
      taskset -c 0 "$BIN" upgrade --pid "$OLD" --config "$work/gw.toml" 2>"$work/new-$round.log")
    pids+=($NEW)
  fi
  wait "$A" "$B"
  python3 - "$work/series.csv" "$work/summary.json" "$event" "$round" "${SERIES:-0}" <<'PY'
import csv, json, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
summary = json.load(open(sys.argv[2]))
event, rnd = float(sys.argv[3]), sys.argv[4]
def window(a, b):
    lat = sorted(float(r["request-duration"]) for r in rows if a <= float(r["request-start"]) < b)
    rps = len(lat) / (b - a)
    p99 = lat[int(len(lat) * 0.99) - 1] * 1e3 if lat else float("nan")
    return rps, p99
steady = window(2, event - 5)
around = window(event - 5, event + 5)
if len(sys.argv) > 5 and sys.argv[5] == "1":
    per = {}
    for r in rows:
        per[int(float(r["request-start"]) - event + 100) - 100] = per.get(int(float(r["request-start"]) - event + 100) - 100, 0) + 1
    print("req/s by second from the event:", " ".join(f"{k}:{v*2}" for k, v in sorted(per.items()) if -6 <= k <= 8))
    fine = {}
    for r in rows:
        t = float(r["request-start"]) - event
        if -0.5 <= t < 2.5:
            fine.setdefault(int((t + 0.5) * 10), []).append(float(r["request-duration"]) * 1e3)
    print("per 100 ms from -0.5 s (requests, max ms):", " ".join(f"{len(v)}/{max(v):.0f}" for k, v in sorted(fine.items())))
codes = summary.get("statusCodeDistribution", {})
# Requests still in flight when oha's own duration ends are cut by oha, not failed.
errors = {k: v for k, v in summary.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
bad = sum(v for k, v in codes.items() if k != "200")
failed = sum(errors.values()) + bad + sum(1 for r in rows if r["status"] != "200")
print(f"round {rnd}: steady {steady[0]*2:.0f} req/s p99 {steady[1]:.2f} ms | around the event "
      f"{around[0]*2:.0f} req/s p99 {around[1]:.2f} ms | req/s {around[0]/steady[0]:.3f}x, "
      f"p99 {around[1]/steady[1]:.2f}x | failed {failed} {errors or ''}")
PY
  # The old process has drained and exited (upgrade); stop the one serving.
  if [ "$EVENT" = upgrade ]; then
    for _ in $(seq 100); do kill -0 "$OLD" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$OLD" 2>/dev/null && echo "round $round: the old process did not exit" >&2
  else
    curl -sf -H 'Authorization: Bearer bench:bench-secret' "http://127.0.0.1:$ADMIN/admin/config" \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["version"] == 2, d["version"]; print("reloaded: version", d["version"], "servers", len(d["config"]["servers"]))'
  fi
  kill -INT "$NEW" 2>/dev/null || true
  sleep 0.5
done
