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
for tool in perf oha nginx python3 taskset; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

MOCK=$(free_port); GW=$(free_port); ADMIN=$(free_port); NGX=$(free_port)
taskset -c 1 "$BIN" mock --listen 127.0.0.1:"$MOCK" --models bench --tokens 16 --threads 1 2>/dev/null &
pids+=($!)
gateway_config() { # listen admin keys(off|required)
  local usage=false
  [ "$3" = required ] && usage=true
  cat <<TOML
[proxy]
listen = "127.0.0.1:$1"
threads = 1
[admin]
listen = "127.0.0.1:$2"
[auth]
proxy = "$3"
[usage]
enabled = $usage
[[servers]]
url = "http://127.0.0.1:$MOCK/v1"
provider = "vllm"
models = ["bench"]
TOML
}
gateway_config "$GW" "$ADMIN" off >"$work/infergate.toml"
RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$work/infergate.toml" 2>"$work/gw.log" &
GW_PID=$!; pids+=($GW_PID)
targets="infergate:$GW:$GW_PID"
AUTH_TOKEN=""
if [ "$WITH_AUTH" = 1 ]; then
  GWA=$(free_port); ADMINA=$(free_port)
  gateway_config "$GWA" "$ADMINA" required >"$work/infergate-auth.toml"
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    taskset -c 0 "$BIN" serve --config "$work/infergate-auth.toml" 2>"$work/gwa.log" &
  GWA_PID=$!; pids+=($GWA_PID)
  wait_port "$ADMINA"; wait_port "$GWA"
  AUTH_TOKEN=$(curl -sf "http://127.0.0.1:$ADMINA/admin/keys" -H 'Authorization: Bearer bench:bench-secret' \
    -H 'content-type: application/json' -d '{"scopes":"chat","name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  targets="$targets infergate-auth:$GWA:$GWA_PID"
fi
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream backend { server 127.0.0.1:$MOCK; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGINX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work/nginx" &
NGX_MASTER=$!; pids+=($NGX_MASTER)
wait_port "$MOCK"; wait_port "$GW"; wait_port "$NGX"; sleep 1
NGX_PID=$(pgrep -P "$NGX_MASTER" | head -1)

BODY='{"messages":[{"role":"user","content":"Say hello in sixteen tokens."}],"model":"bench","max_tokens":16,"user":"bench-user"}'
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
