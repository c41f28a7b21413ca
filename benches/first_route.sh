#!/usr/bin/env bash
# How soon a managed model takes traffic once its engine is ready (issue 11): STARTS times, a
# model whose engine loads for LOAD_MS + 37 ms x i (its /health answers 503 until then; the steps
# move the moment it is ready against the gateway's probe period) is started; from the
# first 200 of the engine's own /health (polled directly, every 2 ms) to the first chat
# completion answered 200 through the gateway (polled alongside). Prints every figure, the
# median and the maximum. The gateway runs on core 0, this script on core 1.
# Usage: benches/first_route.sh   (env: STARTS=10 LOAD_MS=1500)
set -euo pipefail
cd "$(dirname "$0")/.."
STARTS=${STARTS:-10}
LOAD_MS=${LOAD_MS:-1500}
BIN=target/release/infergate
[ -x "$BIN" ] || cargo build --release
source benches/lib.sh
need python3 taskset curl

start_mock
GW=$(free_port); ADMIN=$(free_port)
start_managed_gateway infergate-managed "$GW" "$ADMIN"
wait_port "$ADMIN"; wait_port "$GW"

taskset -c 1 python3 - "$ADMIN" "$GW" "$STARTS" "$LOAD_MS" <<'PY'
import json, re, statistics, sys, time, urllib.error, urllib.request
admin, gw, starts, load_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
H = {"Authorization": "Bearer bench:bench-secret", "content-type": "application/json"}

def call(method, url, body=None, headers=H):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""

def api(method, path, body=None):
    status, raw = call(method, f"http://127.0.0.1:{admin}/admin{path}", body)
    assert 200 <= status < 300, (method, path, status, raw)
    return json.loads(raw)

gaps = []
for i in range(starts):
    served = f"loading-{i}"
    m = api("POST", "/models", {"name": served, "served_model_name": served, "local_path": "m",
        "engine_env": [{"key": "INFERGATE_MOCK_LOAD_MS", "value": str(int(load_ms) + 37 * i)}]})
    api("POST", f"/models/{m['id']}/start")
    port = None
    while port is None:
        lines = "\n".join(api("GET", f"/models/{m['id']}/logs?tail=50")["lines"])
        found = re.search(r"--port (\d+)", lines)
        port = found and found.group(1)
    chat = {"model": served, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    healthy = routed = None
    while healthy is None or routed is None:
        if healthy is None and call("GET", f"http://127.0.0.1:{port}/health", headers={})[0] == 200:
            healthy = time.monotonic()
        if routed is None and call("POST", f"http://127.0.0.1:{gw}/v1/chat/completions", chat,
                                   {"content-type": "application/json"})[0] == 200:
            routed = time.monotonic()
        time.sleep(0.002)
    gaps.append((routed - healthy) * 1e3)
    api("DELETE", f"/models/{m['id']}")
print(f"first routed request after the engine's first /health 200, {starts} starts, engine loading {load_ms} ms + 37 ms x i")
print("each (ms):", " ".join(f"{g:.0f}" for g in gaps))
print(f"median {statistics.median(gaps):.0f} ms, max {max(gaps):.0f} ms")
PY
