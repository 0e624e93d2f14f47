#!/usr/bin/env bash
# Reproduces the performance figures of docs/perf.md (and the README's Performance section).
#
# Every figure comes from `chat-load` (examples/chat-load.rs) against a fresh server: ours
# (`chat-server`, memory broker) or Debian's `nats-server`, started on free loopback ports.
# The server is pinned to core 0 and the load generator to core 1 (`taskset`), release builds.
# Each load scenario runs REPEAT times; every run's JSON summary is kept in $OUT/*.jsonl and
# the table at the end shows the median and the best run. Other processes busy on the machine
# (a compiler...) spoil a run: each summary reports their CPU share ("other" column).
#
#   scripts/bench.sh                 # everything (about 10 minutes)
#   scripts/bench.sh fanout-tcp      # one or more of: fanout-tcp fanout-ws fanout-nats-raw
#                                    #   fanout-nats (async-nats subscribers) rooms rooms-nats
#                                    #   idle-tcp idle-ws idle-nats micro
#   DUR=20 REPEAT=5 scripts/bench.sh fanout-tcp fanout-nats
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$CARGO_TARGET_DIR/release/examples
OUT=${OUT:-$CARGO_TARGET_DIR/bench}
DUR=${DUR:-10}            # measured seconds per run
WARM=${WARM:-2}           # warm-up seconds per run
REPEAT=${REPEAT:-3}       # runs per load scenario
WINDOW=${WINDOW:-1024}    # unacknowledged sends per publisher (chat/1)
MAX_LAG=${MAX_LAG:-5000}  # end-to-end bound, the same for both servers (NATS has no acks)
IDLE=${IDLE:-10000}       # idle connections
NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}
SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(fanout-tcp fanout-ws fanout-nats-raw fanout-nats rooms rooms-nats idle-tcp idle-ws idle-nats micro)

mkdir -p "$OUT"
# 10,000 connections need 10,000 descriptors on each side; children inherit this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --example chat-server --example chat-load

SP=""
cleanup() {
  if [ -n "$SP" ]; then kill "$SP" 2>/dev/null || true; wait "$SP" 2>/dev/null || true; fi
  SP=""
}

# Waits (up to QUIET_WAIT seconds) until the machine's other processes use under 10 % of a
# core, so that a compiler running next door does not spoil a run.
QUIET_WAIT=${QUIET_WAIT:-120}
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
wait_quiet() {
  local t=0 a b
  while [ "$t" -lt "$QUIET_WAIT" ]; do
    a=$(busy); sleep 1; b=$(busy)
    [ $((b - a)) -lt 10 ] && return
    t=$((t + 1))
  done
  echo "warning: the machine is still busy ($((b - a)) % of a core); measuring anyway" >&2
}
trap cleanup EXIT

# A free loopback port (never 4222, the system nats-server's).
free_port() {
  local p
  for p in $(seq "${1:-17100}" 17999); do
    if ! ss -Htln "sport = :$p" | grep -q .; then echo "$p"; return; fi
  done
  echo "no free port" >&2; exit 1
}

# Starts our server on core $SERVER_CORE; sets SP, TCP, WS.
start_chat() {
  TCP=127.0.0.1:$(free_port 17100)
  WS=127.0.0.1:$(free_port 17200)
  taskset -c "$SERVER_CORE" "$BIN/chat-server" --tcp "$TCP" --ws "$WS" --broker memory "$@" \
    >"$OUT/chat-server.out" 2>"$OUT/chat-server.err" &
  SP=$!
  for _ in $(seq 100); do grep -q '^listening' "$OUT/chat-server.out" 2>/dev/null && return; sleep 0.1; done
  echo "chat-server did not start" >&2; cat "$OUT/chat-server.err" >&2; exit 1
}

# Starts nats-server on core $SERVER_CORE; sets SP, NATS.
start_nats() {
  local port; port=$(free_port 17300)
  NATS=127.0.0.1:$port
  taskset -c "$SERVER_CORE" "$NATS_SERVER" -a 127.0.0.1 -p "$port" >"$OUT/nats-server.log" 2>&1 &
  SP=$!
  for _ in $(seq 100); do ss -Htln "sport = :$port" | grep -q . && return; sleep 0.1; done
  echo "nats-server did not start" >&2; exit 1
}

load() { wait_quiet; taskset -c "$LOAD_CORE" "$BIN/chat-load" --json --quiet --server-pid "$SP" "$@"; }

# 1 room, 1 publisher, 100 subscribers, 128-byte bodies, max rate.
FANOUT=(--rooms 1 --pubs 1 --subs 100 --body 128 --rate 0 --window "$WINDOW" --max-lag "$MAX_LAG"
        --duration "$DUR" --warmup "$WARM")
# Our server: memory broker, no rate limit, an outbox large enough for the backlog.
CHAT_OPTS=(--rate-per-sec 0 --outbox-frames 1000000)

run() {
  local name=$1; shift
  : >"$OUT/$name.jsonl"
  case $name in
    fanout-tcp) for i in $(seq "$REPEAT"); do start_chat "${CHAT_OPTS[@]}"; load --tcp "$TCP" "${FANOUT[@]}" >>"$OUT/$name.jsonl"; cleanup; done ;;
    fanout-ws) for i in $(seq "$REPEAT"); do start_chat "${CHAT_OPTS[@]}"; load --ws "ws://$WS/ws" "${FANOUT[@]}" >>"$OUT/$name.jsonl"; cleanup; done ;;
    fanout-nats-raw) for i in $(seq "$REPEAT"); do start_nats; load --target nats --nats-raw-subs --nats "$NATS" "${FANOUT[@]}" >>"$OUT/$name.jsonl"; cleanup; done ;;
    fanout-nats) for i in $(seq "$REPEAT"); do start_nats; load --target nats --nats "$NATS" "${FANOUT[@]}" >>"$OUT/$name.jsonl"; cleanup; done ;;
    rooms)
      # 100 rooms x (1 publisher at 100 msg/s + 10 subscribers); default outbox, no rate limit.
      for i in $(seq "$REPEAT"); do
        start_chat --rate-per-sec 0
        load --tcp "$TCP" --rooms 100 --pubs 1 --subs 10 --body 128 --rate 100 --window 256 --max-lag 0 \
          --duration "$DUR" --warmup "$WARM" >>"$OUT/$name.jsonl"
        cleanup
      done ;;
    rooms-nats)
      # The same against nats-server: what 100 rooms at 100 msg/s cost a server on this machine.
      for i in $(seq "$REPEAT"); do
        start_nats
        load --target nats --nats-raw-subs --nats "$NATS" --rooms 100 --pubs 1 --subs 10 --body 128 --rate 100 \
          --max-lag 0 --duration "$DUR" --warmup "$WARM" >>"$OUT/$name.jsonl"
        cleanup
      done ;;
    idle-tcp) start_chat; load --tcp "$TCP" --idle "$IDLE" --hold 5 >>"$OUT/$name.jsonl"; cleanup ;;
    idle-ws) start_chat; load --ws "ws://$WS/ws" --idle "$IDLE" --hold 5 >>"$OUT/$name.jsonl"; cleanup ;;
    idle-nats) start_nats; load --target nats --nats "$NATS" --idle "$IDLE" --hold 5 >>"$OUT/$name.jsonl"; cleanup ;;
    micro) cargo bench --bench hot_paths -- fanout 2>&1 | tee "$OUT/micro.txt" | grep -E 'fanout|time:' ;;
    *) echo "unknown scenario $name" >&2; exit 2 ;;
  esac
}

for s in "${SCENARIOS[@]}"; do
  echo "== $s" >&2
  run "$s"
done

# The table: median and best run of each scenario.
python3 - "$OUT" "${SCENARIOS[@]}" <<'EOF'
import json, statistics, sys
out, names = sys.argv[1], sys.argv[2:]
for name in names:
    if name == "micro":
        continue
    try:
        runs = [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
    except FileNotFoundError:
        continue
    if not runs:
        continue
    if runs[0]["mode"] == "idle":
        r = runs[0]; s = r["server"]
        if s["rss_bytes_per_connection"] is None:
            continue
        print(f"{name:12} {r['connections']} connections, RSS {s['rss_kib_before']} -> {s['rss_kib_after']} KiB: "
              f"{s['rss_bytes_per_connection'] / 1024:.2f} KiB per connection")
        continue
    def row(r):
        s = r["server"] or {}
        l = r["latency_us"]
        return (f"deliveries/s {r['deliveries_per_sec']:>12,.0f}  server cpu {s.get('cpu_share', 0) * 100:4.0f}%  "
                f"{s.get('cpu_ns_per_delivery', 0):6.0f} ns/delivery  p50 {l['p50'] / 1e3:8.3f} ms  p99 {l['p99'] / 1e3:8.3f} ms  "
                f"max {l['max'] / 1e3:8.3f} ms  gaps {r['gaps']}  dups {r['duplicates']}  missing {r['missing_at_end']}  "
                f"errors {sum(r['errors'].values())}  other {r['other_processes_cpu_share'] * 100:3.0f}%")
    by_rate = sorted(runs, key=lambda r: r["deliveries_per_sec"])
    print(f"{name:12} median: {row(by_rate[len(by_rate) // 2])}")
    print(f"{'':12} best:   {row(by_rate[-1])}")
EOF
