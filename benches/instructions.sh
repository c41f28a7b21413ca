#!/usr/bin/env bash
# CPU instructions per proxied request, infergate vs nginx, counted by `perf stat` under the
# issue-2 load (proxy pinned to core 0 with one worker; oha and the mock backend on core 1).
# Instruction counts barely move with the machine's noise, unlike req/s and CPU time, so this is
# the figure to compare builds with. Reports the median of ROUNDS alternating rounds.
#
# With WITH_AUTH=1 a third target requires an API key (sent by oha) and records usage; its count
# covers every thread of the process, the usage writer included.
#
# Needs: perf (linux-perf) with access to hardware counters, oha, nginx, python3, taskset, curl.
# Usage: benches/instructions.sh          (env: DURATION=6 ROUNDS=3 CONNS=64 WITH_AUTH=0)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
WITH_AUTH=${WITH_AUTH:-0}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need perf oha nginx python3 taskset curl

start_mock
GW=$(free_port); ADMIN=$(free_port)
start_gateway infergate "$GW" "$ADMIN" "memory://"; GW_PID=$STARTED
targets="infergate:$GW:$GW_PID"
AUTH_TOKEN=""
if [ "$WITH_AUTH" = 1 ]; then
  start_keyed_gateway
  targets="$targets infergate-auth:$GWA:$GWA_PID"
fi
start_nginx
wait_port "$MOCK"; wait_port "$GW"; sleep 0.5

load() { # port seconds [bearer]
  local auth=()
  [ -n "${3:-}" ] && auth=(-H "Authorization: Bearer $3")
  taskset -c 1 oha -z "$2"s -c "$CONNS" --no-tui -m POST -H 'content-type: application/json' \
    "${auth[@]}" -d "$BODY" "http://127.0.0.1:$1/v1/chat/completions"
}
load "$GW" 2 >/dev/null; load "$NGX" 2 >/dev/null
[ "$WITH_AUTH" = 1 ] && load "$GWA" 2 "$AUTH_TOKEN" >/dev/null
: >"$work/results"
for r in $(seq "$ROUNDS"); do
  for t in $targets "nginx:$NGX:$NGX_PID"; do
    IFS=: read -r name port pid <<<"$t"
    token=""
    [ "$name" = infergate-auth ] && token=$AUTH_TOKEN
    perf stat -x, -e instructions:u,instructions:k -p "$pid" -o "$work/stat" -- sleep "$DURATION" &
    sp=$!
    load "$port" "$DURATION" "$token" >"$work/oha"
    wait "$sp" || true
    python3 - "$name" "$work/stat" "$work/oha" "$DURATION" >>"$work/results" <<'PY'
import re, sys
name, stat, oha, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
text = open(oha).read()
bad = [c for c, _ in re.findall(r"\[(\d+)\] (\d+) responses", text) if c != "200"]
if bad:
    sys.exit(f"{name}: non-200 answers {bad}")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
counts = {}
for line in open(stat):
    parts = line.strip().split(",")
    if len(parts) > 2 and parts[0].isdigit():
        counts[parts[2]] = int(parts[0])
n = rps * secs
print(name, counts.get("instructions:u", 0) / n, counts.get("instructions:k", 0) / n, rps)
PY
  done
done
python3 - "$work/results" "$DURATION" "$ROUNDS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, u, k, rps = line.split()
    rows.setdefault(name, []).append((float(u), float(k), float(rps)))
print(f"instructions per proxied request, {sys.argv[3]} rounds of {sys.argv[2]} s (medians)")
print("| target | user | kernel | total | total vs nginx |")
print("|---|---|---|---|---|")
med = {n: [statistics.median(c) for c in zip(*v)] for n, v in rows.items()}
ref = med["nginx"][0] + med["nginx"][1]
for name in ("nginx", "infergate", "infergate-auth"):
    if name not in med:
        continue
    u, k, _ = med[name]
    print(f"| {name} | {u:,.0f} | {k:,.0f} | {u + k:,.0f} | {(u + k) / ref:.2f}x |")
PY
