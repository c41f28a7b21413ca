#!/usr/bin/env bash
# Issue 16, item 4: cache-aware routing across a fleet of 8 simulated vLLM servers.
#
# The same seeded open-loop traffic (benches/fleet_load.rs: Poisson arrivals, streaming chat)
# through infergate (`[routing] policy` prefix, affinity, least_inflight) and vllm-router
# (cache_aware, round_robin; installed from PyPI into target/fleet-venv), for workloads
#   a  multi-turn chats           b  shared long system prompts, Zipf popularity
#   c  no sharing at all
# at LOADS percent of the fleet's capacity under ideal placement, for each of SEEDS. Every run
# starts fresh servers (cold caches) and a fresh router. Reported, medians over the seeds:
# TTFT and end-to-end p50/p99 (client side), prefix-cache hit rate (the servers' own
# vllm:prefix_cache_hits_total / queries_total deltas), spread (the busiest server's share of
# requests over the mean share, from vllm:request_success_total), errors, and the ideal-placement
# floor; all after a warm-up (WARMUP). Printed, and written as markdown to target/fleet/results.md
# (each run's figures in target/fleet/runs.jsonl, the routers' and servers' logs in
# target/fleet/logs).
#
# Capacity (req/s) = servers * 1e6 / prefill_us_per_token / mean uncached prompt tokens per request
# under ideal placement (every shared prefix found, whole 16-token blocks), or the decode bound
# servers * max_num_seqs / (max_tokens * decode_ms_per_step / 1e3) if that is lower
# (CAPACITY=capacity_combined_rps: both on one engine, servers * S / (T * D + S * u * U)).
# Floor: per request, ceil(u / max_batched_tokens) steps of D ms plus u * U us of prefill (TTFT),
# then T - 1 decode steps of D ms (end to end); no queueing. Percentiles over the run's requests.
#
# Usage: benches/fleet.sh            (all of it: 5 routers x 3 workloads x 2 loads x 3 seeds x
#                                     DURATION, about 100 minutes at the default 60 s)
#        QUICK=1 benches/fleet.sh    (one seed, 6 s runs: about 6 minutes)
# Env: DURATION=60 SEEDS="1 2 3" LOADS="50 65" WORKLOADS="a b c"
#      ROUTERS="prefix affinity least_inflight vllm_cache_aware vllm_round_robin" (also
#      prefix_valkey2: two infergate instances routing by prefix, sharing a redis-server, the
#      load generator alternating requests between them as a load balancer without stickiness;
#      and ideal: ideal placement with queueing, an oracle no router can be: every request finds
#      cached whatever any earlier request computed (the load generator tells the simulated
#      servers, --sim-assume-cached-field) and goes to the server with the fewest requests in
#      flight (infergate least_inflight))
#      OUTPUT_TOKENS=32 THINK=1 (workload a: mean seconds between a conversation's turns)
#      WARMUP=DURATION/4 (seconds of each run left out of the figures) RAMP=WARMUP (seconds over
#      which the arrival rate rises linearly from 0) CAPACITY=capacity_rps
#      ROUTING_EXTRA= (more [routing] keys for infergate, e.g. 'balance_abs = 16\n')
#      WHOLE_SHARE=0 (share of requests asking for a whole answer, not a stream; TTFT is then
#      the streamed requests') BIN=target/release/infergate (another build to compare, e.g. an
#      older commit's; the load generator is this tree's)
#      SIM=auto|1|0 (0: the plain mock with MOCK_FLAGS, for the plumbing; auto: 1 when the binary
#      has `mock --sim`) SIM_FLAGS=... (below: the simulated servers' flags, one variable)
# Needs: python3 (with venv), taskset, curl (redis-server for prefix_valkey2); cores 0 and 1
# (the router on core 0, the servers and the load generator on core 1).
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-6}; SEEDS=${SEEDS:-1}
else
  DURATION=${DURATION:-60}; SEEDS=${SEEDS:-"1 2 3"}
fi
LOADS=${LOADS:-"50 65"}
WORKLOADS=${WORKLOADS:-"a b c"}
ROUTERS=${ROUTERS:-"prefix affinity least_inflight vllm_cache_aware vllm_round_robin"}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-32}
ROUTING_EXTRA=${ROUTING_EXTRA:-}
THINK=${THINK:-1}
# Seconds at the start of each run left out of the figures (latencies, hit rate, spread): the
# cold caches' first pass. A quarter of the run unless set.
WARMUP=${WARMUP:-$(python3 -c "print($DURATION / 4)")}
# Seconds over which the arrival rate rises from 0 to the run's rate (within the warm-up): a cold
# fleet meets the open conversations' histories and the shared prompts gradually. The warm-up
# unless set.
RAMP=${RAMP:-$WARMUP}
CAPACITY=${CAPACITY:-capacity_rps}
SERVERS=8
MODEL=fleet
# The simulated servers (infergate mock --sim): KV cache per server, block size, prefill cost per
# uncached token, decode step time, batch limits. The capacity and the floor are computed from
# these same figures.
SIM_FLAGS=${SIM_FLAGS:-"--sim --kv-cache-tokens 12288 --sim-block-tokens 16 --sim-prefill-us-per-token 1000 --sim-decode-ms-per-step 10 --sim-max-num-seqs 32 --sim-max-batched-tokens 2048"}
MOCK_FLAGS=${MOCK_FLAGS:-"--ttft-ms 20 --itl-ms 10 --kv-cache-tokens 12288"}
SIM=${SIM:-auto}
VLLM_ROUTER_VERSION=0.1.17
VENV=target/fleet-venv
OUT=target/fleet
BIN=${BIN:-target/release/infergate}
WHOLE_SHARE=${WHOLE_SHARE:-0}
[ -x "$BIN" ] || nice cargo build --release
source benches/lib.sh
need python3 taskset curl
LOGS=$OUT/logs
mkdir -p "$LOGS"

# One figure of SIM_FLAGS: sim_flag NAME DEFAULT.
sim_flag() { local v; v=$(sed -nE "s/.*--$1[ =]([0-9.]+).*/\1/p" <<<"$SIM_FLAGS"); echo "${v:-$2}"; }
PREFILL_US=$(sim_flag sim-prefill-us-per-token 1000)
DECODE_MS=$(sim_flag sim-decode-ms-per-step 10)
MAX_SEQS=$(sim_flag sim-max-num-seqs 32)
MAX_BATCHED=$(sim_flag sim-max-batched-tokens 2048)
BLOCK=$(sim_flag sim-block-tokens 16)
if [ "$SIM" = auto ]; then
  if "$BIN" mock --help | grep -q -- '--sim\b'; then SIM=1; else SIM=0; fi
fi
if [ "$SIM" = 1 ]; then SERVER_FLAGS=$SIM_FLAGS; else
  SERVER_FLAGS=$MOCK_FLAGS
  echo "note: this infergate has no 'mock --sim': plain mock servers ($MOCK_FLAGS); the figures are the plumbing's, not the benchmark's" >&2
fi

# The load generator (built once; the bench profile shares target/release).
LOADGEN=$(nice cargo bench --no-run --bench fleet_load --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "fleet_load" and m.get("executable"): print(m["executable"])' | tail -1)
[ -x "$LOADGEN" ] || { echo "the load generator did not build" >&2; exit 1; }
FIGS=(--servers "$SERVERS" --block-tokens "$BLOCK" --prefill-us-per-token "$PREFILL_US"
  --decode-ms-per-step "$DECODE_MS" --max-num-seqs "$MAX_SEQS" --max-batched-tokens "$MAX_BATCHED"
  --max-tokens "$OUTPUT_TOKENS" --model "$MODEL" --think "$THINK")

# vllm-router into its own venv, when asked for.
if grep -q vllm_ <<<"$ROUTERS"; then
  if ! "$VENV/bin/pip" show vllm-router 2>/dev/null | grep -qx "Version: $VLLM_ROUTER_VERSION"; then
    python3 -m venv "$VENV" || { echo "python3 -m venv failed (apt-get install -y python3-venv)" >&2; exit 1; }
    "$VENV/bin/pip" install -q "vllm-router==$VLLM_ROUTER_VERSION"
  fi
fi

# Does this infergate take a [routing] table? Without one, only affinity (its default) runs.
printf '[proxy]\nlisten = "127.0.0.1:1"\n[routing]\npolicy = "least_inflight"\n[[servers]]\nurl = "http://127.0.0.1:2/v1"\nprovider = "vllm"\nmodels = ["m"]\n' >"$work/probe.toml"
ROUTING_TABLE=1
"$BIN" check-config "$work/probe.toml" >/dev/null 2>&1 || ROUTING_TABLE=0
if [ "$ROUTING_TABLE" = 0 ]; then
  echo "note: this infergate refuses a [routing] table: affinity runs as its default, prefix and least_inflight are skipped" >&2
fi

# The servers of one run for router $1, fresh (cold caches), on core 1: sets PORTS and
# SERVER_PIDS. (For the ideal run they take the load generator's word for what is cached.)
start_servers() {
  PORTS=(); SERVER_PIDS=()
  local oracle=""
  [ "$1" = ideal ] && oracle="--sim-assume-cached-field"
  for i in $(seq 0 $((SERVERS - 1))); do
    local port; port=$(free_port)
    # shellcheck disable=SC2086
    taskset -c 1 "$BIN" mock --listen 127.0.0.1:"$port" --name "sim$i" --models "$MODEL" --threads 1 \
      --tokens "$OUTPUT_TOKENS" $SERVER_FLAGS $oracle 2>>"$LOGS/servers.log" &
    SERVER_PIDS+=($!); PORTS+=("$port")
  done
  for port in "${PORTS[@]}"; do wait_port "$port"; done
}

# One infergate on core 0 routing by POLICY, its state in STORE: infergate_instance POLICY STORE
# LOGNAME; appends its port to RPORTS and its pid to ROUTER_PIDS.
infergate_instance() {
  local port admin conf p
  port=$(free_port); admin=$(free_port); conf="$work/infergate-$port.toml"
  {
    printf '[proxy]\nlisten = "127.0.0.1:%s"\nthreads = 1\nupgrade_sock = "%s"\n[admin]\nlisten = "127.0.0.1:%s"\n' "$port" "$work/up-$port/upgrade.sock" "$admin"
    printf '[store]\nurl = "%s"\n[auth]\nproxy = "off"\n[usage]\nenabled = false\n' "$2"
    if [ "$ROUTING_TABLE" = 1 ]; then
      # The index takes each server to hold what its KV cache holds.
      local kv; kv=$(sed -n 's/.*--kv-cache-tokens \([0-9]*\).*/\1/p' <<<"$SERVER_FLAGS")
      printf '[routing]\npolicy = "%s"\nserver_cache_tokens = %s\n%b' "$1" "${kv:-262144}" "$ROUTING_EXTRA"
    fi
    for p in "${PORTS[@]}"; do
      printf '[[servers]]\nurl = "http://127.0.0.1:%s/v1"\nprovider = "vllm"\nmodels = ["%s"]\n' "$p" "$MODEL"
    done
  } >"$conf"
  INFERGATE_ADMIN_API_KEY=bench INFERGATE_ADMIN_API_SECRET=bench-secret RUST_LOG=warn \
    taskset -c 0 "$BIN" serve --config "$conf" 2>>"$LOGS/router-$3.log" &
  ROUTER_PIDS+=($!); RPORTS+=("$port")
  wait_port "$port"
}

# The router of one run on core 0: start_router NAME; sets ROUTER_URL (several, comma-separated,
# for prefix_valkey2: the load generator alternates between them) and ROUTER_PIDS.
start_router() {
  RPORTS=(); ROUTER_PIDS=()
  case $1 in
    prefix | affinity | least_inflight)
      infergate_instance "$1" "memory://" "$1"
      ;;
    ideal)
      infergate_instance least_inflight "memory://" "$1"
      ;;
    prefix_valkey2)
      # Two instances sharing a redis-server (Valkey's protocol), as behind a load balancer
      # that spreads requests without stickiness: each learns the other's prompts in batches.
      need redis-server
      local vk; vk=$(free_port)
      taskset -c 0 redis-server --port "$vk" --bind 127.0.0.1 --save "" --appendonly no \
        >>"$LOGS/redis.log" 2>&1 &
      local redis=$!
      wait_port "$vk"
      infergate_instance prefix "redis://127.0.0.1:$vk" "$1"
      infergate_instance prefix "redis://127.0.0.1:$vk" "$1"
      ROUTER_PIDS+=("$redis")
      ;;
    vllm_cache_aware | vllm_round_robin)
      local urls=()
      for port in "${PORTS[@]}"; do urls+=("http://127.0.0.1:$port"); done
      # Its defaults otherwise (cache_aware: cache_threshold 0.3, balance_abs_threshold 64,
      # balance_rel_threshold 1.5, eviction_interval_secs 120, max_tree_size 2^25). It opens its
      # port once every worker passed /health; it needs no tokenizer (cache_aware asks the
      # workers' /v1/chat/completions/render for token ids).
      RPORTS=("$(free_port)")
      taskset -c 0 "$VENV/bin/vllm-router" --host 127.0.0.1 --port "${RPORTS[0]}" --worker-urls "${urls[@]}" \
        --policy "${1#vllm_}" --prometheus-host 127.0.0.1 --prometheus-port "$(free_port)" \
        --log-level warning >>"$LOGS/router-$1.log" 2>&1 &
      ROUTER_PIDS+=($!)
      wait_port "${RPORTS[0]}" 600
      ;;
    *) echo "unknown router $1" >&2; exit 1 ;;
  esac
  pids+=("${ROUTER_PIDS[@]}" "${SERVER_PIDS[@]}")
  ROUTER_URL=$(printf 'http://127.0.0.1:%s,' "${RPORTS[@]}"); ROUTER_URL=${ROUTER_URL%,}
}

# Stop a run's processes (SIGTERM, then SIGKILL after 2 s).
stop_run() {
  local p
  for p in "${ROUTER_PIDS[@]}" "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 20); do
    local alive=0
    for p in "${ROUTER_PIDS[@]}" "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${ROUTER_PIDS[@]}" "${SERVER_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}

metrics_urls() { local p u=(); for p in "${PORTS[@]}"; do u+=("http://127.0.0.1:$p"); done; (IFS=,; echo "${u[*]}"); }

# Every server's prefix-cache queries and hits (tokens) and finished requests, as JSON.
scrape() {
  python3 - "${PORTS[@]}" <<'PY'
import json, sys, urllib.request
out = []
for port in sys.argv[1:]:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    sums = {"vllm:prefix_cache_queries_total": 0.0, "vllm:prefix_cache_hits_total": 0.0, "vllm:request_success_total": 0.0}
    for line in page.splitlines():
        if line.startswith("#"): continue
        name = line.split("{")[0].split(" ")[0]
        if name in sums: sums[name] += float(line.rsplit(" ", 1)[1])
    out.append([sums["vllm:prefix_cache_queries_total"], sums["vllm:prefix_cache_hits_total"], sums["vllm:request_success_total"]])
print(json.dumps(out))
PY
}

RUNS="$OUT/runs.jsonl"
: >"$RUNS"
rm -f "$LOGS"/*.log
echo "fleet: $SERVERS servers ($([ "$SIM" = 1 ] && echo "sim: $SIM_FLAGS" || echo "plain mock: $MOCK_FLAGS")), output $OUTPUT_TOKENS tokens, $DURATION s runs, seeds $SEEDS, loads $LOADS% of $CAPACITY" >&2
for w in $WORKLOADS; do
  # The workload's figures (seed 0, 20,000 requests) give the rates: the same for every seed.
  PLAN=$("$LOADGEN" --plan --workload "$w" --seed 0 --rate 20 "${FIGS[@]}")
  echo "$PLAN" >"$OUT/plan-$w.json"
  for load in $LOADS; do
    rate=$(python3 -c "import json,sys; print(round(json.loads(sys.argv[1])['$CAPACITY'] * $load / 100, 3))" "$PLAN")
    for seed in $SEEDS; do
      for r in $ROUTERS; do
        if [ "$ROUTING_TABLE" = 0 ] && [ "$r" != affinity ] && [ "${r#vllm_}" = "$r" ]; then continue; fi
        if [ "$r" = ideal ] && [ "$SIM" != 1 ]; then continue; fi
        start_servers "$r"
        start_router "$r"
        oracle=()
        [ "$r" = ideal ] && oracle=(--assume-cached)
        before=$(scrape)
        result=$(taskset -c 1 "$LOADGEN" --url "$ROUTER_URL" --workload "$w" --rate "$rate" \
          --duration "$DURATION" --seed "$seed" --warmup "$WARMUP" --ramp "$RAMP" --metrics "$(metrics_urls)" "${FIGS[@]}" "${oracle[@]}" \
          --whole-share "$WHOLE_SHARE") ||
          result="{\"workload\": \"$w\", \"seed\": $seed, \"rate\": $rate, \"sent\": 0, \"errors\": -1}"
        after=$(scrape)
        stop_run
        python3 - "$r" "$load" "$result" "$before" "$after" "$PLAN" >>"$RUNS" <<'PY'
import json, sys
router, load, result, before, after, plan = sys.argv[1], int(sys.argv[2]), *map(json.loads, sys.argv[3:])
d = [[a - b for a, b in zip(x, y)] for x, y in zip(after, before)]
q, h = sum(x[0] for x in d), sum(x[1] for x in d)
counts = [int(x[2]) for x in d]
mean = sum(counts) / len(counts)
# The generator's figures cover the run after its warm-up; these, the whole run.
result.update(router=router, load=load, hit_rate_all=h / q if q else None, per_server_all=counts,
              spread_all=max(counts) / mean if mean else None, capacity=plan)
counts = result.get("per_server", counts)
print(json.dumps(result))
f = lambda k, p=0: "-" if result.get(k) is None else f"{result[k]:.{p}f}"
print(f"{result['workload']} {load}% seed {result['seed']} {router:>16}: {f('rate', 1)} req/s, sent {result['sent']}, "
      f"errors {result['errors']}, TTFT p50 {f('ttft_p50_ms')} p99 {f('ttft_p99_ms')} ms, e2e p50 {f('e2e_p50_ms')} ms, "
      f"hit {f('hit_rate', 3)}, spread {f('spread', 2)} {counts}, send lag p99 {f('send_lag_p99_ms', 1)} ms", file=sys.stderr)
PY
      done
    done
  done
done

python3 - "$RUNS" "$OUT/results.md" "$DURATION" "$SEEDS" "$OUTPUT_TOKENS" "$SIM" "$SERVER_FLAGS" "$CAPACITY" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
duration, seeds, out_tokens, sim, flags, capacity = sys.argv[3:9]
def med(rows, k):
    v = [r[k] for r in rows if r.get(k) is not None]
    return statistics.median(v) if v else None
f = lambda x, p=0: "-" if x is None else f"{x:.{p}f}"
names = {"a": "a, multi-turn chats", "b": "b, shared system prompts (Zipf)", "c": "c, no sharing"}
routers = ["prefix", "prefix_valkey2", "affinity", "least_inflight", "vllm_cache_aware", "vllm_round_robin", "ideal"]
lines = [f"Fleet of 8 {'simulated servers' if sim == '1' else 'plain mock servers (plumbing only)'} (`{flags}`), "
         f"{out_tokens} output tokens, {duration} s of Poisson arrivals per run, medians over seeds {seeds}; "
         f"load in % of `{capacity}` under ideal placement.", ""]
table = {}
for w in sorted({r["workload"] for r in runs}):
    plan = next(r["capacity"] for r in runs if r["workload"] == w)
    lines += [f"**{names.get(w, w)}**: {plan['mean_prompt_tokens']:.0f} prompt tokens, {plan['mean_uncached_tokens']:.0f} uncached under ideal placement "
              f"(ideal hit rate {plan['ideal_hit_rate']:.3f}), working set {plan['working_set_tokens']} tokens; capacity {plan[capacity]:.1f} req/s "
              f"(prefill {plan['capacity_prefill_rps']:.1f}, decode {plan['capacity_decode_rps']:.1f}, combined {plan['capacity_combined_rps']:.1f})", "",
              "| load | router | req/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms | hit rate | spread | errors | floor TTFT p50 / p99 ms | floor e2e p50 ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for load in sorted({r["load"] for r in runs if r["workload"] == w}):
        for router in routers:
            rows = [r for r in runs if r["workload"] == w and r["load"] == load and r["router"] == router]
            if not rows: continue
            m = {k: med(rows, k) for k in ("rate", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "hit_rate", "spread", "floor_ttft_p50_ms", "floor_ttft_p99_ms", "floor_e2e_p50_ms")}
            m["errors"] = sum(max(r.get("errors", 0), 0) for r in rows)
            table[(w, load, router)] = m
            lines.append(f"| {load}% | {router} | {f(m['rate'], 1)} | {f(m['ttft_p50_ms'])} | {f(m['ttft_p99_ms'])} | {f(m['e2e_p50_ms'])} | {f(m['e2e_p99_ms'])} | "
                         f"{f(m['hit_rate'], 3)} | {f(m['spread'], 2)} | {m['errors']} | {f(m['floor_ttft_p50_ms'])} / {f(m['floor_ttft_p99_ms'])} | {f(m['floor_e2e_p50_ms'])} |")
    lines.append("")
# Issue 16's goals for `prefix`, where the runs are there.
checks = []
def ratio(w, load, k, other):
    a, b = table.get((w, load, "prefix")), table.get((w, load, other))
    return None if not a or not b or a[k] is None or not b[k] else a[k] / b[k]
loads = sorted({r["load"] for r in runs})
hi = 65 if 65 in loads else max(loads, default=None)
for w in ("a", "b"):
    p = table.get((w, hi, "prefix"))
    if not p: continue
    # (A comparison only where both routers ran.)
    for other, goal in (("vllm_cache_aware", 0.7), ("least_inflight", 0.5)):
        x = ratio(w, hi, "ttft_p50_ms", other)
        if x is not None: checks.append(f"| {w} {hi}% | TTFT p50 vs {other} | {x:.2f}x | <= {goal}x |")
    v = table.get((w, hi, "vllm_cache_aware"))
    if v: checks.append(f"| {w} {hi}% | hit rate vs vllm cache_aware | {f(p['hit_rate'], 3)} vs {f(v['hit_rate'], 3)} | >= |")
    checks.append(f"| {w} {hi}% | spread | {f(p['spread'], 2)} | <= 1.3 |")
    two = table.get((w, hi, "prefix_valkey2"))
    if two and two["hit_rate"] is not None and p["hit_rate"] is not None:
        checks.append(f"| {w} {hi}% | hit rate, two instances on Valkey vs one | {two['hit_rate']:.3f} vs {p['hit_rate']:.3f} | within 0.05 |")
    q = table.get((w, 50, "prefix"))
    if q and q["ttft_p50_ms"] and q["floor_ttft_p50_ms"]:
        checks.append(f"| {w} 50% | TTFT p50 vs floor | {q['ttft_p50_ms'] / q['floor_ttft_p50_ms']:.2f}x | <= 1.2x |")
    for load in loads:
        x = ratio(w, load, "ttft_p50_ms", "ideal")
        if x is not None: checks.append(f"| {w} {load}% | TTFT p50 vs ideal placement with queueing (the ideal run) | {x:.2f}x | |")
for load in loads:
    x = ratio("c", load, "ttft_p50_ms", "least_inflight")
    if x is not None: checks.append(f"| c {load}% | TTFT p50 vs least_inflight | {x:.2f}x | <= 1.05x |")
if checks:
    lines += ["Issue 16's goals for `prefix`:", "", "| run | figure | measured | goal |", "|---|---|---|---|", *checks, ""]
text = "\n".join(lines)
print(text)
open(sys.argv[2], "w").write(text + "\n")
PY
