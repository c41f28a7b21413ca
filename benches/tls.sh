#!/usr/bin/env bash
# TLS termination, infergate against nginx, on the same one core: both serve the issue-2
# request over https (TLS 1.3, the same ECDSA P-256 certificate) and proxy it to the mock over
# plain HTTP. Two loads under oha: keep-alive connections (the steady state: record
# encryption), and a new connection per request (a full handshake each). Medians of ROUNDS
# alternating rounds, and ratios to nginx. The proxies are pinned to core 0 with one worker; oha
# and the backend share core 1.
#
# Needs: oha, nginx, openssl, python3, taskset.
# Usage: benches/tls.sh  (env: DURATION=10s CONNS=64 ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need oha nginx openssl python3 taskset

# A certificate for localhost.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

start_mock
GW=$(free_port); ADMIN=$(free_port)
{ gateway_config "$GW" "$ADMIN" "memory://" | sed "/^\[admin\]/i tls_cert = \"$work/cert.pem\"\ntls_key = \"$work/key.pem\""; } >"$work/gw.toml"
INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
  taskset -c 0 "$BIN" serve --config "$work/gw.toml" 2>"$work/gw.log" &
GW_PID=$!; pids+=($GW_PID)
NGX_TLS_CERT="$work/cert.pem" NGX_TLS_KEY="$work/key.pem" start_nginx
wait_port "$MOCK"; wait_port "$GW"

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # name port pid extra-oha-flags... -> "rps p50_ms p99_ms cpu_us_per_request"
  local name=$1 port=$2 pid=$3; shift 3
  local t0; t0=$(cpu_ticks "$pid")
  taskset -c 1 oha -z "$DURATION" -c "$CONNS" --no-tui --output-format json --insecure "$@" -m POST \
    -H 'content-type: application/json' -d "$BODY" "https://localhost:$port/v1/chat/completions" >"$work/$name.json"
  local t1; t1=$(cpu_ticks "$pid")
  python3 - "$work/$name.json" "$((t1 - t0))" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
if set(codes) != {"200"}: print(f"answers: {codes}", file=sys.stderr); sys.exit(1)
l = d["latencyPercentiles"]
cpu_us = int(sys.argv[2]) * 10_000 / sum(codes.values())  # clock ticks of 10 ms
print(d["summary"]["requestsPerSec"], l["p50"] * 1e3, l["p99"] * 1e3, cpu_us)
PY
}

DURATION=2s run warm-n "$NGX" "$NGX_PID" >/dev/null; DURATION=2s run warm-i "$GW" "$GW_PID" >/dev/null
: >"$work/results"
for r in $(seq "$ROUNDS"); do
  order="nginx:$NGX:$NGX_PID infergate:$GW:$GW_PID"
  [ $((r % 2)) -eq 0 ] && order="infergate:$GW:$GW_PID nginx:$NGX:$NGX_PID"
  for t in $order; do
    IFS=: read -r name port pid <<<"$t"
    echo "keepalive $name $(run "$name-ka-$r" "$port" "$pid")" >>"$work/results"
    echo "handshake $name $(run "$name-hs-$r" "$port" "$pid" --disable-keepalive)" >>"$work/results"
  done
done

python3 - "$work/results" "$DURATION" "$CONNS" "$ROUNDS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, name, rps, p50, p99, cpu = line.split()
    rows.setdefault((mode, name), []).append((float(rps), float(p50), float(p99), float(cpu)))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(4)) for k, v in rows.items()}
print(f"https, non-streaming chat, {sys.argv[3]} connections, {sys.argv[2]} x {sys.argv[4]} rounds (medians)")
print("| load | target | req/s | p50 ms | p99 ms | proxy CPU us/req | req/s vs nginx | p99 vs nginx | CPU/req vs nginx |")
print("|---|---|---|---|---|---|---|---|---|")
for mode, label in (("keepalive", "keep-alive"), ("handshake", "a handshake per request")):
    n = med[(mode, "nginx")]
    for name in ("nginx", "infergate"):
        r = med[(mode, name)]
        print(f"| {label} | {name} | {r[0]:.0f} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.1f} | {r[0]/n[0]:.2f}x | {r[2]/n[2]:.2f}x | {r[3]/n[3]:.2f}x |")
PY
