#!/usr/bin/env bash
# The chaos suite's long form (issue 15, item 4): the five scenarios of tests/e2e/chaos.rs,
# release build, CHAOS_SECS seconds per phase (steady, fault, recovery), each ROUNDS times.
# Every scenario runs a steady load of non-streaming and streaming clients (4 + 2 per gateway)
# and prints one line of counts: answers and streams served whole, failed requests, requests
# per server, and the scenario's own figures.
#   a  kill -9 one of three servers, restart it      b  kill Valkey, restart it (two gateways)
#   c  binary upgrade (`infergate upgrade`)            d  reload: one server out, one in (SIGHUP)
#   e  a server answers 500 for CHAOS_SECS, then recovers
# The short form (CHAOS_SECS=2, debug build) runs in CI with the other end-to-end tests.
# Needs: redis-server. Usage: benches/chaos.sh   (env: CHAOS_SECS=10 ROUNDS=1)
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOS_SECS=${CHAOS_SECS:-10}
ROUNDS=${ROUNDS:-1}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in $(seq "$ROUNDS"); do
  echo "# round $round, CHAOS_SECS=$CHAOS_SECS"
  # One scenario at a time: they share this machine's cores with their load.
  if ! cargo test --release --quiet --test e2e chaos:: -- --nocapture --test-threads=1 >"$log" 2>&1; then
    cat "$log" >&2
    echo "a scenario failed its assertions (above)" >&2
    exit 1
  fi
  grep -o '^chaos .*\|chaos [a-e] (.*' "$log" | sed 's/^test .*\.\.\. //' | sort
done
