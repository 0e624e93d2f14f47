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
#   scripts/bench.sh fanout-tcp      # one or more of: fanout-tcp fanout-ws fanout-ws-deflate
#                                    #   fanout-nats-raw fanout-nats (async-nats subscribers) rooms
#                                    #   rooms-nats idle-tcp idle-ws idle-ws-deflate idle-nats micro
#                                    #   redis-cross-node redis-publish redis-raw (not in "everything")
#                                    #   nats-cross-node nats-publish nats3-cross-node (JetStream broker;
#                                    #   nats3: a three-server cluster, --nats-replicas 3), and for both
#                                    #   brokers {redis,nats}-publish-2nodes, {memory,redis,nats}-rooms-mem
#                                    #   (not in "everything")
#                                    #   store-append-{none,sqlite,postgres} store-latency-{none,sqlite,postgres}
#                                    #   (not in "everything"; `stores` runs all six)
#                                    #   redis-cluster-publish-2nodes redis-cluster-raw redis-cluster-cross-node
#                                    #   (a three-primary Redis Cluster; not in "everything")
#   DUR=20 REPEAT=5 scripts/bench.sh fanout-tcp fanout-nats
#   # Two brokers side by side, runs alternating (a scenario named again appends to its .jsonl):
#   REPEAT=1 scripts/bench.sh redis-cross-node nats-cross-node redis-cross-node nats-cross-node redis-cross-node nats-cross-node
#
# The Redis scenarios start their own redis-server (never the system one on 6379) on a free
# loopback port, pinned to $REDIS_CORE (default: the generator's core), and chat-server nodes
# on it (`--broker redis://...`, pinned to $SERVER_CORE); redis-raw runs redis-benchmark on
# $SERVER_CORE, where the nodes (Redis's clients) run otherwise.
# The redis-cluster-* scenarios start three redis-servers in cluster mode (`--cluster-enabled
# yes`, a fresh temporary directory each, removed at the end) on free loopback ports whose bus
# ports (+10000) are free too, all three pinned to $REDIS_CORE, join them with `redis-cli
# --cluster create` (three primaries, no replicas) and wait until every node says
# `cluster_state:ok`; nodes get `--broker redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
# Run next to the single-Redis scenarios in one invocation for a side-by-side comparison:
#   REPEAT=1 scripts/bench.sh redis-publish-2nodes redis-cluster-publish-2nodes redis-publish-2nodes ...
# The NATS scenarios start their own `nats-server -js` (never the system one on 4222) on a free
# loopback port with a JetStream store in a fresh temporary directory (removed at the end),
# pinned to $JS_CORE (default: $REDIS_CORE, as Redis), and nodes with `--broker nats://...`.
# Every run's JSON gets the load average at its start and end (`loadavg`).
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
REDIS_CORE=${REDIS_CORE:-$LOAD_CORE}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
JS_CORE=${JS_CORE:-$REDIS_CORE}
ROOMS_MEM=${ROOMS_MEM:-"1000 10000"}  # *-rooms-mem: rooms (= connections) on one node
PUB_CONNS=${PUB_CONNS:-"1 4 16 64"}  # redis-publish: publisher connections (one room each)
SCENARIOS=()
for s in "$@"; do
  if [ "$s" = stores ]; then
    SCENARIOS+=(store-append-none store-append-sqlite store-append-postgres store-latency-none store-latency-sqlite store-latency-postgres)
  else
    SCENARIOS+=("$s")
  fi
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(fanout-tcp fanout-ws fanout-nats-raw fanout-nats rooms rooms-nats idle-tcp idle-ws idle-nats micro)

mkdir -p "$OUT"
# 10,000 connections need 10,000 descriptors on each side; children inherit this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# NO_BUILD=1: use the binaries already in $CARGO_TARGET_DIR (another tree's, for a side-by-side run).
[ -n "${NO_BUILD:-}" ] || cargo build --release --example chat-server --example chat-load

SP=""
PIDS=()          # every process a scenario started (SP among them)
SERVER_PIDS=()   # chat-load's --server-pid arguments
cleanup() {
  local i p
  # Last started first: clients (nodes, redis-cli) before the redis-server they talk to.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do p=${PIDS[i]}; kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "$SP" ]; then kill "$SP" 2>/dev/null || true; wait "$SP" 2>/dev/null || true; fi
  SP=""; PIDS=()
  for d in "${JS_DIRS[@]}"; do rm -rf "$d"; done
  JS_DIRS=()
}
JS_DIRS=()       # temporary directories (JetStream stores, Redis Cluster nodes; removed by cleanup)

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
trap 'cleanup; drop_store' EXIT
trap 'exit 130' INT TERM   # so that an interrupted run still stops what it started (EXIT above)

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
  taskset -c "$SERVER_CORE" "$BIN/chat-server" --tcp "$TCP" --ws "$WS" --broker memory --store "${STORE:-none}" "$@" \
    >"$OUT/chat-server.out" 2>"$OUT/chat-server.err" &
  SP=$!
  SERVER_PIDS=(--server-pid "$SP")
  for _ in $(seq 100); do grep -q '^listening' "$OUT/chat-server.out" 2>/dev/null && return; sleep 0.1; done
  echo "chat-server did not start" >&2; cat "$OUT/chat-server.err" >&2; exit 1
}

# Starts a redis-server of our own (no persistence) on core $REDIS_CORE; sets REDIS_PID, REDIS_PORT.
start_redis() {
  REDIS_PORT=$(free_port 17600)
  taskset -c "$REDIS_CORE" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$OUT/redis-server.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  BROKER_URL=redis://127.0.0.1:$REDIS_PORT; BROKER_PIDS=(--server-pid "redis=$REDIS_PID"); BROKER_PID=$REDIS_PID
  REDIS_PORTS=("$REDIS_PORT")
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return; sleep 0.1; done
  echo "redis-server did not start" >&2; cat "$OUT/redis-server.log" >&2; exit 1
}

# Three redis-servers in cluster mode (no persistence, a fresh directory each for nodes.conf),
# all on core $REDIS_CORE, joined by `redis-cli --cluster create` into three primaries sharing
# the 16384 slots (no replicas); ready when every node says cluster_state:ok and knows the
# three. Sets BROKER_URL (redis+cluster://…, the three), BROKER_PID (the first), BROKER_PIDS
# (redis0, redis1, redis2), REDIS_PORTS, REDIS_PORT (the first).
start_redis_cluster() {
  local i p=17700 port dir ok
  REDIS_PORTS=(); BROKER_PIDS=(); BROKER_URL=""
  for i in 0 1 2; do
    # The cluster bus listens on port + 10000.
    while :; do
      port=$(free_port "$p"); p=$((port + 1))
      ss -Htln "sport = :$((port + 10000))" | grep -q . || break
    done
    REDIS_PORTS+=("$port")
  done
  for i in 0 1 2; do
    port=${REDIS_PORTS[i]}
    dir=$(mktemp -d /tmp/chat-bench-redis-cluster.XXXXXX); JS_DIRS+=("$dir")
    taskset -c "$REDIS_CORE" "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --dir "$dir" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --save "" --appendonly no >"$OUT/redis-cluster-$i.log" 2>&1 &
    PIDS+=("$!"); BROKER_PIDS+=(--server-pid "redis$i=$!")
    [ "$i" = 0 ] && BROKER_PID=$!
    BROKER_URL+="127.0.0.1:$port,"
  done
  BROKER_URL=redis+cluster://${BROKER_URL%,}
  REDIS_PORT=${REDIS_PORTS[0]}
  for port in "${REDIS_PORTS[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG || { echo "redis-server (cluster) on $port did not start" >&2; cat "$OUT"/redis-cluster-*.log >&2; exit 1; }
  done
  # shellcheck disable=SC2046
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${REDIS_PORTS[@]}") --cluster-replicas 0 --cluster-yes \
    >"$OUT/redis-cluster-create.log" 2>&1 || { echo "redis-cli --cluster create failed" >&2; cat "$OUT/redis-cluster-create.log" >&2; exit 1; }
  for _ in $(seq 300); do
    ok=1
    for port in "${REDIS_PORTS[@]}"; do
      redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r' | grep -q '^cluster_state:ok' || ok=0
      [ "$(redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r' | awk -F: '/^cluster_known_nodes:/ {print $2}')" = 3 ] || ok=0
    done
    [ "$ok" = 1 ] && return
    sleep 0.1
  done
  echo "the Redis Cluster did not reach cluster_state:ok" >&2; cat "$OUT/redis-cluster-create.log" "$OUT"/redis-cluster-*.log >&2; exit 1
}

# The slots each node of REDIS_PORTS serves, one "port first last" line per range.
redis_slot_ranges() {
  local port
  for port in "${REDIS_PORTS[@]}"; do
    redis-cli -p "$port" cluster nodes | awk -v port="$port" '/myself/ {
      for (i = 9; i <= NF; i++) { n = split($i, r, "-"); print port, r[1], (n > 1 ? r[2] : r[1]) } }'
  done
}
# "port count" per node of REDIS_PORTS: how many of the keys $1 (space-separated) it serves.
redis_keys_per_shard() {
  local ranges
  ranges=$(redis_slot_ranges)
  # shellcheck disable=SC2086
  printf 'cluster keyslot %s\n' $1 | redis-cli -p "${REDIS_PORTS[0]}" | awk -v ranges="$ranges" '
    BEGIN { n = split(ranges, l, "\n"); for (i = 1; i <= n; i++) { split(l[i], f, " "); port[i] = f[1]; lo[i] = f[2]; hi[i] = f[3]; count[f[1]] = 0 } }
    { for (i = 1; i <= n; i++) if ($1 >= lo[i] && $1 <= hi[i]) count[port[i]]++ }
    END { for (p in count) print p, count[p] }'
}
# A key of $1's form (with a number in place of %d) served by the node on port $2.
redis_key_on() {
  local i ranges slot
  ranges=$(redis_slot_ranges | awk -v port="$2" '$1 == port')
  for i in $(seq 0 999); do
    # shellcheck disable=SC2059
    slot=$(redis-cli -p "$2" cluster keyslot "$(printf "$1" "$i")")
    if awk -v s="$slot" '$2 <= s && s <= $3 {f = 1} END {exit !f}' <<<"$ranges"; then
      # shellcheck disable=SC2059
      printf "$1\n" "$i"; return
    fi
  done
  echo "no key of the form $1 on $2" >&2; exit 1
}

# One line per Redis of the broker (REDIS_PORTS): port, its CPU seconds so far (INFO cpu:
# used_cpu_sys + used_cpu_user), and since the last CONFIG RESETSTAT (INFO commandstats) its
# script calls and their usec (EVALSHA, EVAL, FCALL), PUBLISH and SPUBLISH calls.
redis_stats() {
  local p
  for p in "${REDIS_PORTS[@]}"; do
    { redis-cli -p "$p" info cpu; redis-cli -p "$p" info commandstats; } | tr -d '\r' | awk -F'[:,=]' -v port="$p" '
      $1 == "used_cpu_sys" || $1 == "used_cpu_user" {cpu += $2}
      $1 == "cmdstat_evalsha" || $1 == "cmdstat_eval" || $1 == "cmdstat_fcall" {sc += $3; su += $5}
      $1 == "cmdstat_publish" {pc += $3}
      $1 == "cmdstat_spublish" {spc += $3}
      END {printf "%s %.6f %d %d %d %d\n", port, cpu, sc, su, pc, spc}'
  done
}
# The JSON array of the broker's Redis between two redis_stats outputs ($1 before, $2 after):
# per Redis its CPU seconds in between, its commandstats counts, and how many of the rooms
# named in $3 (space-separated) hash to it.
redis_stats_json() {
  local before=$1 after=$2 rooms=$3 counts
  if [ "${#REDIS_PORTS[@]}" -gt 1 ]; then
    counts=$(redis_keys_per_shard "$rooms")
  else
    counts="${REDIS_PORTS[0]} $(wc -w <<<"$rooms")"
  fi
  LC_ALL=C join <(LC_ALL=C sort <<<"$before") <(LC_ALL=C sort <<<"$after") | LC_ALL=C join - <(LC_ALL=C sort <<<"$counts") | awk '
    {printf "%s{\"port\":%s,\"cpu_secs\":%.6f,\"script_calls\":%d,\"script_usec\":%d,\"publish_calls\":%d,\"spublish_calls\":%d,\"rooms\":%d}",
            (NR > 1 ? "," : "["), $1, $7 - $2, $8, $9, $10, $11, $12}
    END {print "]"}'
}

# Starts a nats-server of our own with JetStream (a fresh store directory) on core $JS_CORE;
# sets BROKER_URL, BROKER_PID, BROKER_PIDS.
start_js() {
  local port mon dir; port=$(free_port 17400); mon=$(free_port $((port + 1)))
  dir=$(mktemp -d /tmp/chat-bench-js.XXXXXX); JS_DIRS+=("$dir")
  taskset -c "$JS_CORE" "$NATS_SERVER" -js -sd "$dir" -a 127.0.0.1 -p "$port" -m "$mon" >"$OUT/nats-js.log" 2>&1 &
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  BROKER_URL=nats://127.0.0.1:$port; BROKER_PIDS=(--server-pid "nats=$BROKER_PID")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mon/healthz" 2>/dev/null | grep -q ok && return; sleep 0.1; done
  echo "nats-server -js did not start" >&2; cat "$OUT/nats-js.log" >&2; exit 1
}

# Three nats-servers with JetStream in one cluster (routes to each other), all on core $JS_CORE;
# nodes get all three URLs. Sets BROKER_URL, BROKER_PID (the first), BROKER_PIDS (all three).
start_js_cluster() {
  local i port=() mon=() route=() dir urls="" peers p=17500
  for i in 0 1 2; do
    port[i]=$(free_port "$p"); mon[i]=$(free_port $((port[i] + 1))); route[i]=$(free_port $((mon[i] + 1))); p=$((route[i] + 1))
  done
  BROKER_PIDS=()
  for i in 0 1 2; do
    dir=$(mktemp -d /tmp/chat-bench-js.XXXXXX); JS_DIRS+=("$dir")
    peers=""; for j in 0 1 2; do [ "$j" = "$i" ] || peers+="\"nats://127.0.0.1:${route[j]}\", "; done
    cat >"$dir/nats.conf" <<CONF
server_name: "n$i"
listen: "127.0.0.1:${port[i]}"
http: "127.0.0.1:${mon[i]}"
jetstream { store_dir: "$dir/store", max_memory_store: 256MB, max_file_store: 1GB }
cluster { name: "chat-bench", listen: "127.0.0.1:${route[i]}", routes: [${peers%, }] }
CONF
    taskset -c "$JS_CORE" "$NATS_SERVER" -c "$dir/nats.conf" >"$OUT/nats-js-n$i.log" 2>&1 &
    PIDS+=("$!"); BROKER_PIDS+=(--server-pid "n$i=$!")
    [ "$i" = 0 ] && BROKER_PID=$!
    urls+="nats://127.0.0.1:${port[i]},"
  done
  BROKER_URL=${urls%,}
  # Ready when each has JetStream current with a meta leader.
  for i in 0 1 2; do
    for _ in $(seq 300); do curl -sf "http://127.0.0.1:${mon[i]}/healthz" 2>/dev/null | grep -q ok && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:${mon[i]}/healthz" | grep -q ok || { echo "JetStream cluster did not form" >&2; cat "$OUT"/nats-js-n*.log >&2; exit 1; }
  done
}

# Starts the broker of kind $1 (memory: none; redis; nats; nats3: a three-server cluster).
start_broker() {
  case $1 in
    memory) BROKER_URL=memory; BROKER_PID=""; BROKER_PIDS=() ;;
    redis) start_redis ;;
    redis-cluster) start_redis_cluster ;;
    nats) start_js ;;
    nats3) start_js_cluster ;;
    *) echo "unknown broker $1" >&2; exit 2 ;;
  esac
}
# The broker kind of scenario $1: redis-cluster-* -> redis-cluster, else its first word.
kind_of() { case $1 in redis-cluster-*) echo redis-cluster ;; *) echo "${1%%-*}" ;; esac; }
# chat-server options for broker kind $1.
node_opts() { if [ "$1" = nats3 ]; then echo --nats-replicas 3; fi; }

# Starts chat-server node $1 on the broker last started ($BROKER_URL), on core $SERVER_CORE; sets
# NODE_PID, NODE_TCP, NODE_WS.
start_node() {
  local name=$1; shift
  taskset -c "$SERVER_CORE" "$BIN/chat-server" --broker "$BROKER_URL" --store "${STORE:-none}" --node-id "$name" \
    --tcp 127.0.0.1:0 --ws 127.0.0.1:0 --rate-per-sec 0 "$@" >"$OUT/node-$name.out" 2>"$OUT/node-$name.err" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  local line=""
  for _ in $(seq 100); do
    line=$(grep -m1 '^listening' "$OUT/node-$name.out" 2>/dev/null || true)
    [ -n "$line" ] && break
    sleep 0.1
  done
  [ -n "$line" ] || { echo "node $name did not start" >&2; cat "$OUT/node-$name.err" >&2; exit 1; }
  NODE_TCP=$(sed -E 's/.*tcp=([^ ]+).*/\1/' <<<"$line")
  NODE_WS=$(sed -E 's/.*ws=([^ ]+).*/\1/' <<<"$line")
}

# What a stored 128-byte message weighs on the room's channel (lua/publish.lua's `S` payload:
# header, epoch, sender, body), measured with MONITOR: 181 bytes. redis-raw publishes that many.
RAW_PAYLOAD_BYTES=${RAW_PAYLOAD_BYTES:-181}

# Starts nats-server on core $SERVER_CORE; sets SP, NATS.
start_nats() {
  local port; port=$(free_port 17300)
  NATS=127.0.0.1:$port
  taskset -c "$SERVER_CORE" "$NATS_SERVER" -a 127.0.0.1 -p "$port" >"$OUT/nats-server.log" 2>&1 &
  SP=$!
  SERVER_PIDS=(--server-pid "$SP")
  for _ in $(seq 100); do ss -Htln "sport = :$port" | grep -q . && return; sleep 0.1; done
  echo "nats-server did not start" >&2; exit 1
}

# The store scenarios' servers: `--store` for kind $1 (none, sqlite: a fresh file in $OUT,
# postgres: a fresh database on $PG_URL's server, dropped by cleanup); sets STORE.
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
PG_DB=""
store_for() {
  case $1 in
    none) STORE=none ;;
    sqlite) rm -f "$OUT"/bench-store.db*; STORE="sqlite:$OUT/bench-store.db" ;;
    postgres)
      PG_DB=chat_bench_$$_$RANDOM
      psql -q "$PG_URL/postgres" -c "CREATE DATABASE $PG_DB" >/dev/null
      STORE="$PG_URL/$PG_DB" ;;
    *) echo "unknown store $1" >&2; exit 2 ;;
  esac
}
drop_store() {
  if [ -n "$PG_DB" ]; then psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null; PG_DB=""; fi
  rm -f "$OUT"/bench-store.db*
  STORE=none
}

# One chat-load run on core $LOAD_CORE after waiting for a quiet machine; its JSON line gets the
# load average at the start and the end of the run (`loadavg`). load_now: without the wait.
load() { wait_quiet; load_now "$@"; }
load_now() {
  local la0 out
  la0=$(cut -d' ' -f1-3 /proc/loadavg)
  out=$(taskset -c "$LOAD_CORE" "$BIN/chat-load" --json --quiet "${SERVER_PIDS[@]}" "$@") || return 1
  sed "s/^{/{\"loadavg\":{\"start\":\"$la0\",\"end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"},/" <<<"$out"
}
# A run that failed: its logs are kept in $OUT/failed-<scenario>-<time>/, and the scenario goes on.
keep_logs() {
  local d; d=$OUT/failed-$1-$(date +%H%M%S)
  mkdir -p "$d"; cp "$OUT"/node-*.{out,err} "$OUT"/*.log "$d"/ 2>/dev/null || true
  local p; for p in "${PIDS[@]}"; do if kill -0 "$p" 2>/dev/null; then echo "$p running"; else echo "$p gone"; fi; done >"$d/pids"
  ss -Htlnp >"$d/listening" 2>/dev/null || true
  echo "warning: a $1 run failed; logs in $d" >&2
}
# VmRSS (KiB) of process $1.
rss() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# 1 room, 1 publisher, 100 subscribers, 128-byte bodies, max rate.
FANOUT=(--rooms 1 --pubs 1 --subs 100 --body 128 --rate 0 --window "$WINDOW" --max-lag "$MAX_LAG"
        --duration "$DUR" --warmup "$WARM")
# Our server: memory broker, no rate limit, an outbox large enough for the backlog.
CHAT_OPTS=(--rate-per-sec 0 --outbox-frames 1000000)
IDLE_OPTS=(--max-connections "$((IDLE + 1000))" --max-connections-per-ip "$((IDLE + 1000))")

declare -A STARTED=()   # scenarios run already in this invocation: named again, they append
run() {
  local name=$1; shift
  [ -n "${STARTED[$name]:-}" ] || : >"$OUT/$name.jsonl"
  STARTED[$name]=1
  case $name in
    fanout-tcp) for i in $(seq "$REPEAT"); do start_chat "${CHAT_OPTS[@]}"; load --tcp "$TCP" "${FANOUT[@]}" >>"$OUT/$name.jsonl"; cleanup; done ;;
    fanout-ws) for i in $(seq "$REPEAT"); do start_chat "${CHAT_OPTS[@]}"; load --ws "ws://$WS/ws" "${FANOUT[@]}" >>"$OUT/$name.jsonl"; cleanup; done ;;
    # The same with permessage-deflate negotiated: each message is compressed once for all 100
    # subscribers (the generator inflates every copy).
    fanout-ws-deflate) for i in $(seq "$REPEAT"); do start_chat "${CHAT_OPTS[@]}" --ws-deflate; load --ws "ws://$WS/ws" --ws-deflate "${FANOUT[@]}" >>"$OUT/$name.jsonl"; cleanup; done ;;
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
    # $IDLE connections from one address: the connection limits (default 25,000, 1,000 per IP)
    # raised above them.
    idle-tcp) start_chat "${IDLE_OPTS[@]}"; load --tcp "$TCP" --idle "$IDLE" --hold 5 >>"$OUT/$name.jsonl"; cleanup ;;
    idle-ws) start_chat "${IDLE_OPTS[@]}"; load --ws "ws://$WS/ws" --idle "$IDLE" --hold 5 >>"$OUT/$name.jsonl"; cleanup ;;
    idle-ws-deflate) start_chat "${IDLE_OPTS[@]}" --ws-deflate; load --ws "ws://$WS/ws" --ws-deflate --idle "$IDLE" --hold 5 >>"$OUT/$name.jsonl"; cleanup ;;
    idle-nats) start_nats; load --target nats --nats "$NATS" --idle "$IDLE" --hold 5 >>"$OUT/$name.jsonl"; cleanup ;;
    redis-cross-node | redis-cluster-cross-node | nats-cross-node | nats3-cross-node)
      # Two nodes on one broker; 10 rooms x (1 publisher at 100 msg/s on node a + 10 subscribers on
      # node b): every delivery crosses the broker. Fresh broker and nodes per run. XN_ROOMS,
      # XN_SUBS, XN_RATE change the shape (default 10, 10, 100): XN_ROOMS=100 XN_SUBS=1 publishes
      # 10,000 messages/s, each delivered once across the broker (100 rooms spread over a
      # cluster's shards).
      local kind; kind=$(kind_of "$name")
      local xn=(--rooms "${XN_ROOMS:-10}" --pubs 1 --subs "${XN_SUBS:-10}" --body 128 --rate "${XN_RATE:-100}")
      for i in $(seq "$REPEAT"); do
        start_broker "$kind"
        start_node a $(node_opts "$kind"); A_PID=$NODE_PID; A_TCP=$NODE_TCP
        start_node b $(node_opts "$kind"); B_PID=$NODE_PID; B_TCP=$NODE_TCP
        SERVER_PIDS=(--server-pid "a=$A_PID" --server-pid "b=$B_PID" "${BROKER_PIDS[@]}")
        load --pub-tcp "$A_TCP" --sub-tcp "$B_TCP" "${xn[@]}" --window 256 \
          --max-lag 0 --duration "$DUR" --warmup "$WARM" >>"$OUT/$name.jsonl" || keep_logs "$name"
        cleanup
      done ;;
    redis-publish | nats-publish)
      # Publish throughput through the broker: one node, N publisher connections (one room each,
      # no subscriber: the publisher's own copy comes back through the broker), 128-byte bodies,
      # max rate with --window pipelined sends per connection; acknowledged messages/s.
      for i in $(seq "$REPEAT"); do
        for n in $PUB_CONNS; do
          start_broker "${name%%-*}"
          start_node a
          SERVER_PIDS=(--server-pid "a=$NODE_PID" "${BROKER_PIDS[@]}")
          load --tcp "$NODE_TCP" --rooms "$n" --pubs 1 --subs 0 --body 128 --rate 0 --window "$WINDOW" --max-lag 0 \
            --duration "$DUR" --warmup "$WARM" >>"$OUT/$name.jsonl"
          cleanup
        done
      done ;;
    redis-publish-2nodes | redis-cluster-publish-2nodes | nats-publish-2nodes)
      # The same with 100 publisher connections on two nodes: 50 on node a and 50 on node b, one
      # room each (100 rooms, prefixes pa-/pb-), by two chat-load processes started together (one
      # per node; chat-load takes one --tcp), both on $LOAD_CORE; each reports every process's
      # CPU over its own window. Two JSON lines per run ("part": "a", "b"): add their acked/s.
      # PUB2_ROOMS x PUB2_PUBS publishers per node (default 50 x 1; 5 x 10 puts ten publishers
      # in each room). On Redis, Redis's own count of script calls and their time over the whole
      # run (warm-up included; INFO commandstats) goes into part a's line as "redis_scripts"
      # (summed over a cluster's shards: EVALSHA, EVAL and FCALL calls), and per Redis (one, or
      # each shard of redis-cluster-publish-2nodes) its INFO cpu seconds over the whole run, its
      # commandstats and how many of the rooms hash to it, as "redis_shards".
      local rooms=${PUB2_ROOMS:-50} pubs=${PUB2_PUBS:-1} kind; kind=$(kind_of "$name")
      local names="" r
      for r in $(seq 0 $((rooms - 1))); do names+="pa-$r pb-$r "; done
      for i in $(seq "$REPEAT"); do
        start_broker "$kind"
        start_node a; A_PID=$NODE_PID; A_TCP=$NODE_TCP
        start_node b; B_PID=$NODE_PID; B_TCP=$NODE_TCP
        SERVER_PIDS=(--server-pid "a=$A_PID" --server-pid "b=$B_PID" "${BROKER_PIDS[@]}")
        wait_quiet
        local before=""
        if [[ $kind == redis* ]]; then
          for r in "${REDIS_PORTS[@]}"; do redis-cli -p "$r" config resetstat >/dev/null; done
          before=$(redis_stats)
        fi
        local shape=(--rooms "$rooms" --pubs "$pubs" --subs 0 --body 128 --rate 0 --window "$WINDOW" --max-lag 0 --duration "$DUR" --warmup "$WARM")
        # A generator that fails: its stderr and the run's logs are kept (keep_logs), the run is
        # left out of the .jsonl, and the scenario goes on.
        load_now --tcp "$A_TCP" --room-prefix pa "${shape[@]}" >"$OUT/$name.a" 2>"$OUT/$name.a.err" &
        local la=$! failed=""
        load_now --tcp "$B_TCP" --room-prefix pb "${shape[@]}" >"$OUT/$name.b" 2>"$OUT/$name.b.err" || failed=b
        wait "$la" || failed+=a
        if [ -n "$failed" ]; then
          keep_logs "$name"
          cp "$OUT/$name".[ab].err "$(ls -d "$OUT/failed-$name"-* | tail -1)"/ 2>/dev/null || true
          echo "warning: chat-load failed ($failed); stderr: $(tail -c 600 "$OUT/$name".[ab].err)" >&2
          cleanup; continue
        fi
        local scripts='{}' shards='[]'
        if [[ $kind == redis* ]]; then
          local after; after=$(redis_stats)
          shards=$(redis_stats_json "$before" "$after" "$names")
          scripts=$(awk '{c += $3; u += $4} END {if (c > 0) printf "{\"calls\":%d,\"usec\":%d}", c, u}' <<<"$after")
          [ -n "$scripts" ] || scripts='{}'
        fi
        sed "s/^{/{\"part\":\"a\",\"shape\":\"${rooms}x${pubs}\",\"redis_scripts\":$scripts,\"redis_shards\":$shards,/" "$OUT/$name.a" >>"$OUT/$name.jsonl"
        sed "s/^{/{\"part\":\"b\",\"shape\":\"${rooms}x${pubs}\",/" "$OUT/$name.b" >>"$OUT/$name.jsonl"
        cleanup
      done ;;
    memory-rooms-mem | redis-rooms-mem | nats-rooms-mem)
      # Memory per room subscription: a fresh node holds N idle connections (hello + join), all in
      # one room, then (fresh broker and node) each in a room of its own: N rooms with one local
      # member each, so N subscriptions to the broker. For N in $ROOMS_MEM. ROOMS_MEM_BASE=tenth:
      # N/10 rooms of 10 members instead of one room of N (on NATS, one room of 10,000 members on
      # one node is pathological: see docs/perf.md). The node's RSS
      # before/after (chat-load), the broker's RSS before and its highest while held (sampled
      # here every 0.2 s): "broker_rss_kib". (N rooms - 1 room) / N = bytes per room subscription.
      local kind=${name%%-*} n rooms lp b0 bmax r
      for n in $ROOMS_MEM; do
        local base=${ROOMS_MEM_BASE:-1}; [ "$base" = tenth ] && base=$((n / 10))
        for rooms in "$base" "$n"; do
          start_broker "$kind"
          start_node a --max-connections $((n + 1000)) --max-connections-per-ip $((n + 1000)) --max-rooms $((n + 1000))
          SERVER_PIDS=(--server-pid "a=$NODE_PID")
          wait_quiet
          sleep 1
          b0=0; [ -n "$BROKER_PID" ] && b0=$(rss "$BROKER_PID")
          load_now --tcp "$NODE_TCP" --idle "$n" --rooms "$rooms" --hold 5 >"$OUT/$name.one" &
          lp=$!; bmax=$b0
          while kill -0 "$lp" 2>/dev/null; do
            if [ -n "$BROKER_PID" ]; then r=$(rss "$BROKER_PID"); [ "$r" -gt "$bmax" ] && bmax=$r; fi
            sleep 0.2
          done
          wait "$lp"
          sed "s/^{/{\"broker\":\"$kind\",\"broker_rss_kib\":{\"before\":$b0,\"max\":$bmax},/" "$OUT/$name.one" >>"$OUT/$name.jsonl"
          cleanup
        done
      done ;;
    redis-raw)
      # Raw Redis on the same payload: PUBLISH of $RAW_PAYLOAD_BYTES bytes to a channel with one
      # subscriber (as our node subscribes to its rooms), with 1 and 50 connections, pipelining 1
      # and 16; and EVALSHA of our publish script (lua/epoch.lua + lua/publish.lua, with the
      # broker's arguments, 128-byte bodies) storing batches of 1 and of 16 messages, with 50
      # connections pipelining 16: calls/s, and Redis's own time per call and per message from
      # INFO commandstats. redis-benchmark runs on core $SERVER_CORE.
      start_redis
      # The subscriber (redis-cli, on the benchmark's core) is slower than Redis at full speed: no
      # output-buffer limit, or Redis would disconnect it and later PUBLISHes would reach no one.
      redis-cli -p "$REDIS_PORT" config set client-output-buffer-limit "pubsub 0 0 0" >/dev/null
      taskset -c "$SERVER_CORE" redis-cli -p "$REDIS_PORT" subscribe chat:{bench}:chan >/dev/null &
      PIDS+=("$!")
      local payload body sha r c pl n msg usec
      payload=$(head -c "$RAW_PAYLOAD_BYTES" /dev/zero | tr '\0' x)
      body=$(printf '{"t":1000000000000000,"p":"%s"}' "$(head -c 99 /dev/zero | tr '\0' x)")
      sha=$(redis-cli -p "$REDIS_PORT" script load "$(printf '#!lua\n'; cat chat-broker-redis/src/lua/epoch.lua chat-broker-redis/src/lua/publish.lua)")
      : >"$OUT/$name.csv"
      for c in 1 50; do
        for pl in 1 16; do
          wait_quiet
          r=$(taskset -c "$SERVER_CORE" redis-benchmark -p "$REDIS_PORT" -c "$c" -P "$pl" -n $((c == 1 && pl == 1 ? 50000 : 400000)) --csv \
            PUBLISH chat:{bench}:chan "$payload" | tail -1 | awk -F, '{print $(NF-6)}' | tr -d '"')
          echo "PUBLISH,$RAW_PAYLOAD_BYTES,$c,$pl,$r" >>"$OUT/$name.csv"
        done
      done
      for n in 1 16; do
        # ARGV: epoch prologue (new epoch name, ttl, known epoch, seq, id), channel, maxlen,
        # idempotency window, publishing command, then (from, ts, body, key index) per message.
        msg=()
        for _ in $(seq "$n"); do msg+=(pub-0-0 1795826582184 "$body" ""); done
        wait_quiet
        redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
        r=$(taskset -c "$SERVER_CORE" redis-benchmark -p "$REDIS_PORT" -c 50 -P 16 -n $((200000 / n)) --csv \
          EVALSHA "$sha" 3 "chat:{bench}:e" "chat:{bench}:s" "chat:{bench}:h" r0bench 86400000 "" 0 "" \
          chat:{bench}:chan 1000 300000 PUBLISH "${msg[@]}" | tail -1 | awk -F, '{print $(NF-6)}' | tr -d '"')
        usec=$(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'[:,=]' '/^cmdstat_evalsha:/ {print $7}')
        echo "EVALSHA publish.lua x$n,${#body},50,16,$r,$usec" >>"$OUT/$name.csv"
      done
      # Still one subscriber at the end (else the PUBLISH figures are of a channel nobody hears).
      echo "subscribers at the end: $(redis-cli -p "$REDIS_PORT" pubsub numsub chat:{bench}:chan | tail -1)" \
        >"$OUT/$name.commandstats"
      redis-cli -p "$REDIS_PORT" info commandstats | grep -E 'cmdstat_(publish|evalsha|xadd)' >>"$OUT/$name.commandstats" || true
      cleanup ;;
    redis-cluster-raw)
      # Raw Redis Cluster on the same payload, as the cluster broker publishes (sharded pub/sub,
      # on the shard serving the room's slot): SPUBLISH of $RAW_PAYLOAD_BYTES bytes. One shard
      # channel per shard (chat:{bench-N}:chan, a name whose slot that shard serves), each with
      # one subscriber (redis-cli SSUBSCRIBE on its shard, as a node subscribes to its rooms), and
      # one redis-benchmark per shard, all at once (on $SERVER_CORE), C connections each pipelining
      # P: C x P = 1 x 1, 1 x 16, 17 x 1, 17 x 16 (3 x 17 = 51 connections, next to redis-raw's 50);
      # requests/s added over the shards (each benchmark's own rate: they start together and
      # finish within a moment of each other; the slowest is kept too). Then 17 x 16 on one shard
      # alone, and `redis-benchmark --cluster` (51 x 16), which picks its own channels (no
      # subscriber); then our publish script on every shard at once (below). Per line, the
      # shards' INFO cpu seconds over the run divided by the messages published (commandstats'
      # SPUBLISH calls, times the messages per script call): Redis CPU per message.
      start_redis_cluster
      local payload j port shards c pl n before after bp
      local chans=()
      payload=$(head -c "$RAW_PAYLOAD_BYTES" /dev/zero | tr '\0' x)
      for j in 0 1 2; do
        port=${REDIS_PORTS[j]}
        chans[j]=$(redis_key_on "chat:{bench-%d}:chan" "$port")
        # The subscriber is slower than Redis at full speed: no output-buffer limit (see redis-raw).
        redis-cli -p "$port" config set client-output-buffer-limit "pubsub 0 0 0" >/dev/null
        taskset -c "$SERVER_CORE" redis-cli -p "$port" ssubscribe "${chans[j]}" >/dev/null &
        PIDS+=("$!")
      done
      sleep 0.5
      : >"$OUT/$name.csv"
      # $1 label, $2 shards, $3 benchmarks (bp; default $2, one per shard), $4 messages per
      # request (default 1), $5 bytes per message (default the payload's): appends a CSV line
      # (requests/s: added, the slowest shard's, each; Redis CPU per message; script usec per call).
      raw_cluster_line() {
        local k r all="" tot=0 min="" stats
        wait "${bp[@]}"
        after=$(redis_stats)
        for k in $(seq 0 $((${3:-$2} - 1))); do
          r=$(tail -1 "$OUT/$name.s$k" | awk -F, '{print $(NF-6)}' | tr -d '"')
          all+="$r;"; tot=$(awk -v a="$tot" -v b="$r" 'BEGIN {print a + b}')
          min=$(awk -v a="${min:-$r}" -v b="$r" 'BEGIN {print (b < a ? b : a)}')
        done
        # Every request (an SPUBLISH, or a script call that makes one) is one SPUBLISH.
        stats=$(LC_ALL=C join <(LC_ALL=C sort <<<"$before") <(LC_ALL=C sort <<<"$after") | awk -v m="${4:-1}" '
          {cpu += $7 - $2; n += $11; sc += $8; su += $9}
          END {if (n > 0) printf "%.3f", cpu * 1e6 / n / m; printf ","; if (sc > 0) printf "%.2f", su / sc}')
        echo "$1,${5:-$RAW_PAYLOAD_BYTES},$2,$c,$pl,$tot,$min,${all%;},$stats" >>"$OUT/$name.csv"
      }
      for shards in 3 1; do
        for c in 1 17; do
          for pl in 1 16; do
            [ "$shards" = 1 ] && [ "$c/$pl" != 17/16 ] && continue
            n=$((c == 1 && pl == 1 ? 30000 : 400000))
            wait_quiet
            for port in "${REDIS_PORTS[@]}"; do redis-cli -p "$port" config resetstat >/dev/null; done
            before=$(redis_stats); bp=()
            for j in $(seq 0 $((shards - 1))); do
              taskset -c "$SERVER_CORE" redis-benchmark -p "${REDIS_PORTS[j]}" -c "$c" -P "$pl" -n "$n" --csv \
                SPUBLISH "${chans[j]}" "$payload" >"$OUT/$name.s$j" 2>&1 &
              bp+=("$!"); PIDS+=("$!")
            done
            raw_cluster_line SPUBLISH "$shards"
          done
        done
      done
      c=51; pl=16
      wait_quiet
      for port in "${REDIS_PORTS[@]}"; do redis-cli -p "$port" config resetstat >/dev/null; done
      before=$(redis_stats)
      taskset -c "$SERVER_CORE" redis-benchmark --cluster -p "${REDIS_PORTS[0]}" -c "$c" -P "$pl" -n 1200000 --csv \
        SPUBLISH "chat:{tag}:chan" "$payload" >"$OUT/$name.s0" 2>&1 &
      bp=("$!"); PIDS+=("$!")
      raw_cluster_line "SPUBLISH --cluster (no subscriber)" 3 1
      # Our publish script (as redis-raw's EVALSHA, with SPUBLISH as the publishing command, as
      # on a cluster) on each shard at once, keys and channel in that shard's bench slot: batches
      # of 1 and of 16 messages, 17 connections per shard pipelining 16.
      local body sha msg tag
      body=$(printf '{"t":1000000000000000,"p":"%s"}' "$(head -c 99 /dev/zero | tr '\0' x)")
      c=17; pl=16
      for n in 1 16; do
        msg=()
        for _ in $(seq "$n"); do msg+=(pub-0-0 1795826582184 "$body" ""); done
        wait_quiet
        for port in "${REDIS_PORTS[@]}"; do redis-cli -p "$port" config resetstat >/dev/null; done
        before=$(redis_stats); bp=()
        for j in 0 1 2; do
          tag=${chans[j]#chat:\{}; tag=${tag%%\}*}
          sha=$(redis-cli -p "${REDIS_PORTS[j]}" script load "$(printf '#!lua\n'; cat chat-broker-redis/src/lua/epoch.lua chat-broker-redis/src/lua/publish.lua)")
          taskset -c "$SERVER_CORE" redis-benchmark -p "${REDIS_PORTS[j]}" -c "$c" -P "$pl" -n $((100000 / n)) --csv \
            EVALSHA "$sha" 3 "chat:{$tag}:e" "chat:{$tag}:s" "chat:{$tag}:h" r0bench 86400000 "" 0 "" \
            "${chans[j]}" 1000 300000 SPUBLISH "${msg[@]}" >"$OUT/$name.s$j" 2>&1 &
          bp+=("$!"); PIDS+=("$!")
        done
        raw_cluster_line "EVALSHA publish.lua x$n (SPUBLISH)" 3 3 "$n" "${#body}"
      done
      # Still one subscriber per shard channel at the end.
      for j in 0 1 2; do
        echo "${REDIS_PORTS[j]} ${chans[j]}: $(redis-cli -p "${REDIS_PORTS[j]}" pubsub shardnumsub "${chans[j]}" | tail -1) subscriber(s)"
        redis-cli -p "${REDIS_PORTS[j]}" info commandstats | grep -E 'cmdstat_(spublish|ssubscribe|evalsha|xadd)' || true
      done >"$OUT/$name.commandstats"
      cleanup ;;
    store-append-* | store-latency-*)
      # 100 publishers (one room each, no other subscriber), 128-byte bodies; `sent` waits for
      # the store's commit. store-append: as fast as 32 unacknowledged sends each allow;
      # store-latency: a steady 10,000 messages/s (100 msg/s each), for `sent` latency.
      local shape=(--rate 0 --window 32)
      [[ $name == store-latency-* ]] && shape=(--rate 100 --window 256)
      for i in $(seq "$REPEAT"); do
        store_for "${name##*-}"
        start_chat --rate-per-sec 0
        load --tcp "$TCP" --rooms 100 --pubs 1 --subs 0 --body 128 "${shape[@]}" --max-lag 0 \
          --duration "$DUR" --warmup "$WARM" >>"$OUT/$name.jsonl"
        cleanup; drop_store
      done ;;
    micro) cargo bench --bench hot_paths -- fanout 2>&1 | tee "$OUT/micro.txt" | grep -E 'fanout|time:' ;;
    *) echo "unknown scenario $name" >&2; exit 2 ;;
  esac
}

for s in "${SCENARIOS[@]}"; do
  echo "== $s" >&2
  run "$s"
done

# The table: median and best run of each scenario.
WARM=$WARM python3 - "$OUT" "${SCENARIOS[@]}" <<'EOF'
import json, os, statistics, sys
WARM_SECS = float(os.environ["WARM"])
out, names = sys.argv[1], list(dict.fromkeys(sys.argv[2:]))  # a scenario named twice: once
for name in names:
    if name == "micro":
        continue
    if name == "redis-cluster-raw":
        try:
            for l in open(f"{out}/redis-cluster-raw.csv"):
                cmd, size, shards, c, p, tot, slowest, each, cpu, usec = l.strip().split(",")
                print(f"{name:12} {cmd:34} {size:>4} B  {shards} shard(s) x {c:>2} connection(s)  pipeline {p:>2}: "
                      f"{float(tot):>10,.0f} requests/s (each shard: {', '.join(f'{float(x):,.0f}' for x in each.split(';'))})"
                      + (f"  Redis CPU {float(cpu):.2f} us per message (INFO cpu, summed)" if cpu else "")
                      + (f"  script {float(usec):.1f} us per call (commandstats)" if usec else ""))
        except FileNotFoundError:
            pass
        continue
    if name == "redis-raw":
        try:
            for l in open(f"{out}/redis-raw.csv"):
                cmd, size, c, p, rps, *usec = l.strip().split(",")
                line = f"{name:12} {cmd:22} {size:>4} B  {c:>2} connection(s)  pipeline {p:>2}: {float(rps):>10,.0f} requests/s"
                if usec and cmd.startswith("EVALSHA"):
                    n = int(cmd.rsplit("x", 1)[1])
                    line += f"  Redis {float(usec[0]):.1f} us per call, {float(usec[0]) / n:.1f} us per message"
                print(line)
        except FileNotFoundError:
            pass
        continue
    try:
        runs = [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
    except FileNotFoundError:
        continue
    if not runs:
        continue
    if name.endswith("-rooms-mem"):
        # Pairs of runs with N connections: all in 1 room, then N rooms (one member each).
        by_n = {}
        for r in runs:
            by_n.setdefault(r["connections"], {})[r["rooms"]] = r
        for n, pair in sorted(by_n.items()):
            for rooms, r in sorted(pair.items()):
                s, b = r["server"], r["broker_rss_kib"]
                print(f"{name:12} {n} connections, {rooms:>5} rooms: node RSS {s['rss_kib_before']} -> {s['rss_kib_after']} KiB, "
                      f"broker RSS {b['before']} -> {b['max']} KiB  failures {sum(r['failures'].values())}  "
                      f"loadavg {r['loadavg']['start']}")
            lo = min(pair)
            if n in pair and lo < n:
                d = lambda r: r["server"]["rss_kib_after"] - r["server"]["rss_kib_before"]
                db = lambda r: r["broker_rss_kib"]["max"] - r["broker_rss_kib"]["before"]
                print(f"{'':12} per room subscription ({lo} -> {n} rooms): node {(d(pair[n]) - d(pair[lo])) * 1024 / (n - lo):,.0f} B, "
                      f"broker {(db(pair[n]) - db(pair[lo])) * 1024 / (n - lo):,.0f} B")
        continue
    if name.endswith("-publish-2nodes"):
        # Two chat-load processes per run (parts a and b): their acked/s added.
        for a, b in zip(runs[0::2], runs[1::2]):
            cpu = "  ".join(f"{x['name']} {x['cpu_share'] * 100:3.0f}%" for x in a["servers"] if x)
            errs = sum(a["errors"].values()) + sum(b["errors"].values())
            rs = a.get("redis_scripts") or {}
            shards = a.get("redis_shards") or []
            if shards:
                # Redis CPU per acknowledged send: the redis-servers' CPU over a's window (/proc,
                # from chat-load) divided by both parts' acknowledged sends in their windows; and
                # INFO cpu over the whole run (warm-up and setup included), summed over the shards,
                # divided by the sends of the whole run (the window's rate taken as the run's).
                acked = a["acked"] + b["acked"]
                proc = sum(x["cpu_secs"] for x in a["servers"] if x and x["name"].startswith("redis"))
                sent = (a["acked_per_sec"] + b["acked_per_sec"]) * (a["duration_secs"] + WARM_SECS)
                info = sum(x["cpu_secs"] for x in shards)
                each = "  ".join(f"{x['port']}: {x['rooms']} rooms, {x['script_calls']:,} script calls, "
                                 f"{x['cpu_secs']:.2f} s CPU" for x in shards)
                print(f"{name:12} redis CPU per acked send: {proc * 1e6 / acked:.1f} us (/proc, a's window, "
                      f"{len(shards)} redis-server(s) summed), {info * 1e6 / sent:.1f} us (INFO cpu, whole run)  [{each}]")
            if rs:
                # Over the whole run, warm-up included: per script call, and per acknowledged send
                # (the window's rate taken as the whole run's).
                sent = (a["acked_per_sec"] + b["acked_per_sec"]) * (a["duration_secs"] + WARM_SECS)
                print(f"{name:12} redis: {rs['calls']:,} script calls, {rs['usec'] / rs['calls']:.1f} us each, "
                      f"~{rs['usec'] / sent:.1f} us per acked send (shape {a.get('shape')})")
            print(f"{name:12} acked/s {a['acked_per_sec'] + b['acked_per_sec']:>9,.0f} (a {a['acked_per_sec']:,.0f} + "
                  f"b {b['acked_per_sec']:,.0f})  cpu (a's window) {cpu}  generators {a['generator_cpu_share'] * 100:3.0f}% "
                  f"{b['generator_cpu_share'] * 100:3.0f}%  errors {errs}  other {a['other_processes_cpu_share'] * 100:3.0f}% (includes "
                  f"the other generator)  loadavg {a['loadavg']['start']}")
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
        if name.startswith("store-"):
            a = r["sent_latency_us"]
            return (f"acked/s {r['acked_per_sec']:>9,.0f}  sent after p50 {a['p50'] / 1e3:7.3f} ms  p99 {a['p99'] / 1e3:7.3f} ms  "
                    f"server cpu {s.get('cpu_share', 0) * 100:4.0f}% {s.get('cpu_ns_per_message', 0) / 1e3:6.1f} us/msg  "
                    f"errors {sum(r['errors'].values())}  other {r['other_processes_cpu_share'] * 100:3.0f}%")
        if len(r.get("servers", [])) > 1:
            cpu = "  ".join(f"{x['name']} {x['cpu_share'] * 100:3.0f}% {x['cpu_ns_per_message'] / 1e3:6.1f} us/msg"
                            for x in r["servers"] if x)
            return (f"acked/s {r['acked_per_sec']:>9,.0f}  deliveries/s {r['deliveries_per_sec']:>9,.0f}  {cpu}  "
                    f"p50 {l['p50'] / 1e3:7.3f} ms  p99 {l['p99'] / 1e3:7.3f} ms  p99.9 {l['p999'] / 1e3:7.3f} ms  "
                    f"max {l['max'] / 1e3:7.3f} ms  gaps {r['gaps']}  dups {r['duplicates']}  missing {r['missing_at_end']}  "
                    f"errors {sum(r['errors'].values())}  other {r['other_processes_cpu_share'] * 100:3.0f}%"
                    + (f"  loadavg {r['loadavg']['start']}" if "loadavg" in r else ""))
        return (f"deliveries/s {r['deliveries_per_sec']:>12,.0f}  server cpu {s.get('cpu_share', 0) * 100:4.0f}%  "
                f"{s.get('cpu_ns_per_delivery', 0):6.0f} ns/delivery  p50 {l['p50'] / 1e3:8.3f} ms  p99 {l['p99'] / 1e3:8.3f} ms  "
                f"max {l['max'] / 1e3:8.3f} ms  gaps {r['gaps']}  dups {r['duplicates']}  missing {r['missing_at_end']}  "
                f"errors {sum(r['errors'].values())}  other {r['other_processes_cpu_share'] * 100:3.0f}%")
    # Runs of different shapes (redis-publish: rooms = publisher connections) get their own rows.
    shapes = sorted({r["rooms"] for r in runs})
    for shape in shapes:
        group = [r for r in runs if r["rooms"] == shape]
        label = f"{name}" if len(shapes) == 1 else f"{name} x{shape}"
        if name.startswith("store-append"):
            by_rate = sorted(group, key=lambda r: r["acked_per_sec"])
        elif name.startswith(("redis-", "nats", "store-")) and group[0]["rate"] > 0:
            # A fixed rate: runs differ in latency, best = lowest p99.
            by_rate = sorted(group, key=lambda r: -r["latency_us"]["p99"])
        else:
            by_rate = sorted(group, key=lambda r: (r["deliveries_per_sec"], r["acked_per_sec"]))
        print(f"{label:12} median: {row(by_rate[len(by_rate) // 2])}")
        print(f"{'':12} best:   {row(by_rate[-1])}")
EOF
