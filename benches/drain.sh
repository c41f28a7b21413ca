#!/usr/bin/env bash
# A SIGTERM under load, as an operator stops an instance behind a load balancer: clients send
# non-streaming and streaming requests without a pause; two seconds in, the gateway gets
# SIGTERM; the clients play the load balancer and stop sending new requests once /health says
# draining (within the grace period), and every request already sent must finish. Counts what
# the clients saw (answers, failures, whole streams) against the usage records the gateway
# wrote to Valkey before it exited, and how long the stop took.
#
# Needs: python3, redis-server. Usage: benches/drain.sh  (env: ROUNDS=5 GRACE=2 STREAMS=4 PLAIN=8)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
GRACE=${GRACE:-2}
STREAMS=${STREAMS:-4}
PLAIN=${PLAIN:-8}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need python3 redis-server

MOCK=$(free_port)
# 40 tokens at 10 ms: an answer takes 0.4 s, streamed or not.
"$BIN" mock --listen 127.0.0.1:"$MOCK" --models bench --tokens 40 --itl-ms 10 2>"$work/mock.log" &
pids+=($!)
REDIS=$(free_port)
redis-server --port "$REDIS" --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$MOCK"; wait_port "$REDIS"

cat >"$work/load.py" <<'PY'
import http.client, json, sys, threading, time, urllib.request
port, streams, plain, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
draining = threading.Event()
lock = threading.Lock()
counts = {"ok": 0, "failed": 0, "streams_whole": 0, "streams_cut": 0}
def bump(k):
    with lock: counts[k] += 1
def body(stream):
    return json.dumps({"model": "bench", "stream": stream, "user": "drain",
        "messages": [{"role": "user", "content": "hi"}]}).encode()
def client(stream):
    c = None
    while not draining.is_set():
        try:
            if c is None:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("POST", "/v1/chat/completions", body(stream), {"content-type": "application/json"})
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                bump("failed"); continue
            bump("ok")
            if stream:
                bump("streams_whole" if data.endswith(b"data: [DONE]\n\n") else "streams_cut")
            if r.getheader("connection", "").lower() == "close":
                c.close(); c = None
        except Exception:
            bump("failed"); c = None
def balancer():
    # Checks /health every 100 ms, as a load balancer would; stops the clients once draining.
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        except Exception:
            draining.set(); return
        time.sleep(0.1)
threads = [threading.Thread(target=client, args=(i < streams,)) for i in range(streams + plain)]
threads.append(threading.Thread(target=balancer))
for t in threads: t.start()
for t in threads: t.join()
json.dump(counts, open(out, "w"))
PY

: >"$work/rounds"
for r in $(seq "$ROUNDS"); do
  GW=$(free_port); ADMIN=$(free_port)
  cat >"$work/gw.toml" <<TOML
[proxy]
listen = "127.0.0.1:$GW"
threads = 1
grace_period_seconds = $GRACE
graceful_shutdown_timeout_seconds = 10
[admin]
listen = "127.0.0.1:$ADMIN"
[auth]
proxy = "off"
[usage]
enabled = true
[store]
url = "redis://127.0.0.1:$REDIS/"
prefix = "drain$r"
[[servers]]
url = "http://127.0.0.1:$MOCK/v1"
provider = "vllm"
models = ["bench"]
TOML
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    "$BIN" serve --config "$work/gw.toml" 2>"$work/gw-$r.log" &
  gw=$!
  wait_port "$GW"
  python3 "$work/load.py" "$GW" "$STREAMS" "$PLAIN" "$work/counts-$r.json" &
  load=$!
  sleep 2
  start=$(date +%s.%N)
  kill -TERM "$gw"
  code=0; wait "$gw" || code=$?
  stop=$(date +%s.%N)
  wait "$load"
  # The usage records of this round, read through a fresh instance on the same Valkey.
  P2=$(free_port); A2=$(free_port)
  sed -e "s/127.0.0.1:$GW/127.0.0.1:$P2/" -e "s/127.0.0.1:$ADMIN/127.0.0.1:$A2/" "$work/gw.toml" >"$work/reader.toml"
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    "$BIN" serve --config "$work/reader.toml" 2>/dev/null &
  reader=$!; pids+=($reader)
  wait_port "$A2"
  recorded=$(curl -sf -H 'Authorization: Bearer bench:bench-secret' "http://127.0.0.1:$A2/admin/usage?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  kill "$reader"; wait "$reader" 2>/dev/null || true
  python3 - "$work/counts-$r.json" "$recorded" "$start" "$stop" "$code" >>"$work/rounds" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
print(c["ok"], c["failed"], c["streams_whole"], c["streams_cut"], sys.argv[2],
      f"{float(sys.argv[4]) - float(sys.argv[3]):.2f}", sys.argv[5])
PY
done

echo "SIGTERM under load: $STREAMS streaming and $PLAIN non-streaming clients, grace ${GRACE}s, $ROUNDS rounds"
echo "| round | answered 200 | failed | streams whole | streams cut | usage records | SIGTERM to exit s | exit code |"
echo "|---|---|---|---|---|---|---|---|"
n=0
while read -r ok failed whole cut recorded took code; do
  n=$((n + 1))
  echo "| $n | $ok | $failed | $whole | $cut | $recorded | $took | $code |"
done <"$work/rounds"
