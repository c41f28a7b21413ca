# Shared setup of the benchmark scripts (sourced): a work directory and process cleanup, free
# ports, the mock backend, infergate configs and processes, nginx, and a keyed gateway.
# Expects BIN (the infergate binary) to be set.

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port [tenths of a second to wait, default 100]
  for _ in $(seq "${2:-100}"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2; exit 1
}
need() { for tool in "$@"; do command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }; done; }

# The mock vLLM backend on core 1: sets MOCK.
start_mock() {
  MOCK=$(free_port)
  taskset -c 1 "$BIN" mock --listen 127.0.0.1:"$MOCK" --models bench --tokens 16 --threads 1 2>"$work/mock.log" &
  pids+=($!)
}

# N more mock servers on core 1 (model "fleet", idle): sets FLEET to their ports.
start_fleet() {
  FLEET=()
  for _ in $(seq "$1"); do
    local port; port=$(free_port)
    taskset -c 1 "$BIN" mock --listen 127.0.0.1:"$port" --models fleet --threads 1 2>/dev/null &
    pids+=($!); FLEET+=("$port")
  done
  for port in "${FLEET[@]}"; do wait_port "$port"; done
}

# [[servers]] entries for the FLEET ports.
fleet_servers() {
  for port in "${FLEET[@]}"; do
    printf '[[servers]]\nurl = "http://127.0.0.1:%s/v1"\nprovider = "vllm"\nmodels = ["fleet"]\n' "$port"
  done
}

# The admin paths a monitoring dashboard reads.
SYSTEM_PATHS="system/summary system/throughput system/gpus system/host/summary system/host/trends?minutes=15&step_s=15 system/capabilities models/metrics"

# Ask every one of SYSTEM_PATHS of the admin port $1 once a second, forever.
poll_dashboard() {
  while true; do
    for p in $SYSTEM_PATHS; do
      curl -sf -o /dev/null -H 'Authorization: Bearer bench:bench-secret' "http://127.0.0.1:$1/admin/$p" || true
    done
    sleep 1
  done
}

gateway_config() { # listen admin store-url [keys: off|required]
  local keys=${4:-off} usage=false
  [ "$keys" = required ] && usage=true
  cat <<TOML
[proxy]
listen = "127.0.0.1:$1"
threads = 1
[admin]
listen = "127.0.0.1:$2"
[store]
url = "$3"
[auth]
# The plain gateway (the issue-2 comparison) runs with keys and usage off.
proxy = "$keys"
[usage]
enabled = $usage
[[servers]]
url = "http://127.0.0.1:$MOCK/v1"
provider = "vllm"
models = ["bench"]
TOML
}

# An infergate on core 0 with one worker: start_gateway NAME PORT ADMIN STORE [keys]; sets
# STARTED to its pid.
start_gateway() {
  gateway_config "$2" "$3" "$4" "${5:-off}" >"$work/$1.toml"
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    taskset -c 0 "$BIN" serve --config "$work/$1.toml" 2>"$work/$1.log" &
  STARTED=$!; pids+=($STARTED)
}

# A gateway requiring API keys and recording usage: sets GWA, ADMINA, GWA_PID and AUTH_TOKEN (a key
# with the chat scope).
start_keyed_gateway() {
  GWA=$(free_port); ADMINA=$(free_port)
  start_gateway infergate-auth "$GWA" "$ADMINA" "memory://" required; GWA_PID=$STARTED
  wait_port "$ADMINA"; wait_port "$GWA"
  AUTH_TOKEN=$(curl -sf "http://127.0.0.1:$ADMINA/admin/keys" -H 'Authorization: Bearer bench:bench-secret' \
    -H 'content-type: application/json' -d '{"scopes":"chat","name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
}

# The nginx config (one worker, a keep-alive upstream pool to the mock) in $work/nginx.conf:
# sets NGX, its port.
# nginx proxying to the mock; over TLS when NGX_TLS_CERT and NGX_TLS_KEY name PEM files.
nginx_config() {
  NGX=$(free_port)
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
    listen 127.0.0.1:$NGX${NGX_TLS_CERT:+ ssl};
    ${NGX_TLS_CERT:+ssl_certificate $NGX_TLS_CERT; ssl_certificate_key $NGX_TLS_KEY; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m;}
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
}

# nginx on core 0: sets NGX and NGX_PID.
start_nginx() {
  nginx_config
  taskset -c 0 nginx -c "$work/nginx.conf" -p "$work/nginx" &
  local master=$!; pids+=($master)
  wait_port "$NGX"; sleep 0.5
  NGX_PID=$(pgrep -P "$master" | head -1)
}

BODY=${BODY:-'{"messages":[{"role":"user","content":"Say hello in sixteen tokens."}],"model":"bench","max_tokens":16,"user":"bench-user"}'}

# A gateway that also runs managed models (the process runner, with this binary's mock engine as
# `vllm`): start_managed_gateway NAME PORT ADMIN; sets STARTED. Its engines inherit its core.
start_managed_gateway() {
  mkdir -p "$work/models/m"
  local base=$((20000 + RANDOM % 9000))
  { gateway_config "$2" "$3" "memory://"; cat <<TOML
[runner]
kind = "process"
models_dir = "$work/models"
port_min = $base
port_max = $((base + 199))
stop_grace_secs = 2
[runner.vllm]
command = ["$PWD/$BIN", "mock-engine"]
startup_timeout_secs = 60
TOML
  } >"$work/$1.toml"
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    taskset -c 0 "$BIN" serve --config "$work/$1.toml" 2>"$work/$1.log" &
  STARTED=$!; pids+=($STARTED)
}

# admin ADMIN_PORT METHOD PATH [JSON]: one admin API call, its body on stdout.
admin() {
  curl -sf -X "$2" "http://127.0.0.1:$1/admin$3" -H 'Authorization: Bearer bench:bench-secret' \
    -H 'content-type: application/json' ${4:+-d "$4"}
}

# start_managed_models ADMIN_PORT N: create and start N managed models (served as managed-1..N),
# then wait until every one runs.
start_managed_models() {
  for i in $(seq "$2"); do
    local id
    id=$(admin "$1" POST /models "{\"name\":\"managed-$i\",\"served_model_name\":\"managed-$i\",\"local_path\":\"m\"}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    admin "$1" POST "/models/$id/start" >/dev/null
  done
  for _ in $(seq 600); do
    local running
    running=$(admin "$1" GET "/models?state=running&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
    [ "$running" = "$2" ] && return 0
    sleep 0.1
  done
  echo "the managed models did not all reach running" >&2; exit 1
}
