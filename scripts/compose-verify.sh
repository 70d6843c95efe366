#!/usr/bin/env bash
# `make compose-test`: the containerised cluster checked as a user would use it,
# in the spirit of envoyproxy/examples' verify.sh. It brings docker-compose.yml
# up as its own project (so a stack you are running is left alone), repeats the
# README's compose steps through the load balancer on 127.0.0.1, then the fault
# tests of the compose issue:
#
#   1. a write through the load balancer can be read from every node;
#   2. a replica's kv-backend is killed during writes and started again: all
#      nodes converge, no acknowledged write is missing;
#   3. a replica node is cut from the cluster network during writes (a
#      partition) and reconnected: all nodes converge;
#   4. the primary's kv-backend is killed (SIGKILL) during writes and started
#      again: every acknowledged write survives, and the replicas converge;
#  4b. (stronger than the issue asks) replica-1's kv-backend is down while the
#      primary's Envoy restarts, losing the filter's in-memory retries: only the
#      primary's log can bring the missed writes;
#   5. a replica whose kv-backend starts empty (new volume) catches up;
#   6. on any failure the compose logs are printed; the stack is always torn
#      down (`down -v`).
#
# Plus the container boundaries: only the load balancer publishes a port, a
# kv-backend is reachable from its own node's Envoy only, and a forged
# replication write is refused.
#
# Traffic goes only to 127.0.0.1 (the published port) and, with `docker exec`,
# from inside the project's own containers to themselves or each other. Every
# wait is bounded. The image must exist (`make compose-build`).
#
# Environment: REPLIKV_TEST_PROJECT (replikvtest), REPLIKV_TEST_PORT (10080),
# REPLIKV_CONVERGE_TIMEOUT seconds (45), REPLIKV_IMAGE (replikv:local), COMPOSE.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/compose-lib.sh

export COMPOSE_PROJECT_NAME=${REPLIKV_TEST_PROJECT:-replikvtest}
export REPLIKV_PORT=${REPLIKV_TEST_PORT:-10080}
# A throwaway secret for this run: never the one in your .env.
REPLIKV_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export REPLIKV_SECRET
# The README's zone, plus a larger one for the fault tests' keys.
export REPLIKV_ZONES=default:32k,faults:1m
CONVERGE=${REPLIKV_CONVERGE_TIMEOUT:-45}
LB=http://127.0.0.1:$REPLIKV_PORT
NODES=(primary replica-1 replica-2)
NET=$(compose_project)_replikv

work=$(mktemp -d)
started=$(date +%s)
passed=0
failed=0
failures=()

say() { printf '\n=== %s (%s s)\n' "$*" "$(( $(date +%s) - started ))"; }
info() { printf '    %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf 'PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); failures+=("$1"); printf 'FAIL %s\n' "$1"; shift; for l in "$@"; do printf '     %s\n' "$l"; done; }

logs_done=
summary_done=
print_logs() {
  logs_done=1
  say "compose ps and logs (a check failed)"
  timeout 60 "${compose_cmd[@]}" ps 2>&1
  # (without Envoy's start-up list of compiled-in extensions)
  timeout 60 "${compose_cmd[@]}" logs --no-color --tail 150 2>&1 \
    | grep -vE '\[info\]\[main\] \[source/server/server\.cc:[0-9]+\]   ' | tail -n 400
}

torn_down=
teardown() {
  torn_down=1
  say "tear down (down -v)"
  timeout 120 "${compose_cmd[@]}" down -v --remove-orphans >/dev/null 2>&1 \
    || echo "warning: compose down failed" >&2
}

cleanup() {
  local rc=$?
  [ -f "$work/writer.pid" ] && kill "$(cat "$work/writer.pid")" 2>/dev/null
  if [ -z "$logs_done" ] && { [ "$failed" -gt 0 ] || [ "$rc" -ne 0 ]; }; then
    print_logs
  fi
  [ -n "$torn_down" ] || teardown
  rm -rf "$work"
  if [ -z "$summary_done" ]; then
    echo "compose-verify: $passed passed, $((failed > 0 ? failed : 1)) failed (stopped early, exit $rc)"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers ---------------------------------------------------------------------

# node_get NODE PATH: GET through the node's own Envoy listener, from inside that
# node's Envoy container (busybox wget). Prints the body; fails on non-2xx.
node_get() {
  local id
  id=$(container_of "$1") && [ -n "$id" ] || return 1
  timeout 10 docker exec "$id" busybox wget -q -O - "http://127.0.0.1:10000$2" 2>/dev/null
}

# json EXPR < JSON: evaluates a Python expression over the parsed document `d`.
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# lb_write KEY VALUE: POST through the load balancer into zone `faults`; prints the HTTP code.
lb_write() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST \
    -d "{\"$1\":\"$2\"}" "$LB/api/9/http/keyvals/faults" 2>/dev/null || true
}

# writer_start PREFIX: writes PREFIX-0001, PREFIX-0002, ... through the load
# balancer, about 20 a second, until writer_stop (at most 2000 writes). Keys that
# were acknowledged (201) are listed in $work/PREFIX.acked.
writer_start() {
  local prefix=$1
  : >"$work/$prefix.acked"
  : >"$work/$prefix.failed"
  rm -f "$work/stop"
  (
    for i in $(seq -f '%04g' 1 2000); do
      [ -f "$work/stop" ] && break
      code=$(lb_write "$prefix-$i" "v$i")
      if [ "$code" = 201 ]; then echo "$prefix-$i" >>"$work/$prefix.acked"
      else echo "$prefix-$i $code" >>"$work/$prefix.failed"; fi
      sleep 0.05
    done
  ) &
  echo $! >"$work/writer.pid"
}
writer_stop() {
  touch "$work/stop"
  local pid
  pid=$(cat "$work/writer.pid")
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  rm -f "$work/writer.pid"
  info "writer $1: $(wc -l <"$work/$1.acked") writes acknowledged, $(wc -l <"$work/$1.failed") refused or failed"
}

# status NODE: "history seq" from /replikv/status, or "? ?".
status() {
  node_get "$1" /replikv/status | json 'd["history"], d["seq"]' 2>/dev/null | tr -d "(),'" || echo "? ?"
}

# converged: every node has the primary's history, seq and data (all zones).
# Sets $lag to a description of what differs.
converged() {
  local p n ps ns pd nd
  lag=
  ps=$(status primary)
  pd=$(node_get primary /api/9/http/keyvals/ | json 'json.dumps(d, sort_keys=True)' 2>/dev/null)
  [ -n "$pd" ] || { lag="primary does not answer"; return 1; }
  for n in replica-1 replica-2; do
    ns=$(status "$n")
    nd=$(node_get "$n" /api/9/http/keyvals/ | json 'json.dumps(d, sort_keys=True)' 2>/dev/null)
    if [ "$ns" != "$ps" ] || [ "$nd" != "$pd" ]; then
      lag="$lag $n at [$ns] vs primary [$ps]$([ "$nd" != "$pd" ] && echo ', data differs');"
    fi
  done
  [ -z "$lag" ]
}

# wait_converged TIMEOUT: polls converged, bounded.
wait_converged() {
  local deadline=$(( $(date +%s) + $1 ))
  while ! converged; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 1
  done
}

# missing_on NODE FILE: prints the keys listed in FILE that NODE's zone `faults` lacks.
missing_on() {
  node_get "$1" /api/9/http/keyvals/faults >"$work/zone.json" || { echo "(node $1 does not answer)"; return; }
  python3 -c '
import json, sys
have = json.load(open(sys.argv[1]))
for k in open(sys.argv[2]).read().split():
    if k not in have:
        print(k)' "$work/zone.json" "$2"
}

# check_acked NAME PREFIX GUARANTEE: all nodes converge and none lacks an acknowledged write.
check_acked() {
  local name=$1 prefix=$2 guarantee=$3 n missing lost=()
  if [ ! -s "$work/$prefix.acked" ]; then
    fail "$name" "no write was acknowledged during the test: the load balancer or the primary did not accept writes"
    return
  fi
  if ! wait_converged "$CONVERGE"; then
    for n in "${NODES[@]}"; do
      missing=$(missing_on "$n" "$work/$prefix.acked" | wc -l)
      [ "$missing" -gt 0 ] && lost+=("$n lacks $missing of $(wc -l <"$work/$prefix.acked") acknowledged writes")
    done
    local hp sp hn sn
    read -r hp sp <<<"$(status primary)"
    for n in replica-1 replica-2; do
      read -r hn sn <<<"$(status "$n")"
      if [ "$hn" = "$hp" ] && [ "$sn" != "$sp" ] && [ "$sn" != "?" ]; then
        lost+=("$n stays at seq $sn of the primary's $sp: seq $((sn + 1)) never reached it and every later shadow write is a gap (409)")
      fi
    done
    fail "$name" "nodes did not converge within ${CONVERGE} s:$lag" "${lost[@]}" "missing guarantee: $guarantee"
    return
  fi
  for n in "${NODES[@]}"; do
    missing=$(missing_on "$n" "$work/$prefix.acked")
    [ -n "$missing" ] && lost+=("$n lacks acknowledged writes: $(echo $missing | cut -c1-200)")
  done
  if [ "${#lost[@]}" -gt 0 ]; then
    fail "$name" "${lost[@]}" "missing guarantee: no acknowledged write is lost"
  else
    ok "$name ($(wc -l <"$work/$prefix.acked") acknowledged writes on every node, all nodes at [$(status primary)])"
  fi
}

# --- bring the stack up, as the README does ------------------------------------------

say "prerequisites"
docker info >/dev/null 2>&1 || { echo "docker is not running: scripts/compose-prereqs.sh starts it" >&2; exit 1; }
docker image inspect "${REPLIKV_IMAGE:-replikv:local}" >/dev/null 2>&1 \
  || { echo "image ${REPLIKV_IMAGE:-replikv:local} not found: run make compose-build" >&2; exit 1; }
info "compose: ${compose_cmd[*]} ($("${compose_cmd[@]}" version --short 2>/dev/null || echo '?')), project $(compose_project), load balancer $LB"
# Leftovers of an interrupted run.
timeout 120 "${compose_cmd[@]}" down -v --remove-orphans >/dev/null 2>&1

say "make compose-up (docker compose up -d, wait until healthy)"
if ! timeout 180 scripts/compose-up.sh; then
  fail "compose up: every service healthy" "see the logs below"
  exit 1
fi
ok "compose up: all ${#COMPOSE_SERVICES[@]} services healthy"

say "README: write and read through the load balancer"
out=$(curl -s -i --max-time 10 -X POST -d '{"greeting":"hello"}' "$LB/api/9/http/keyvals/default")
if echo "$out" | head -n 1 | grep -q ' 201'; then ok "POST {\"greeting\":\"hello\"} through the load balancer: 201"
else fail "POST through the load balancer" "got: $(echo "$out" | head -n 1)"; fi
out=$(curl -s --max-time 10 "$LB/replicated/9/http/keyvals/default?key=greeting")
if [ "$out" = '{"greeting":"hello"}' ]; then ok "GET /replicated/...?key=greeting through the load balancer: $out"
else fail "GET through the load balancer" "got: $out"; fi
out=$(curl -s --max-time 10 "$LB/api/")
if echo "$out" | grep -q 9; then ok "GET /api/ through the load balancer: $out"
else fail "GET /api/ through the load balancer" "got: $out"; fi

say "container boundaries"
published=$(for s in "${COMPOSE_SERVICES[@]}"; do p=$(docker port "$(container_of "$s")" 2>/dev/null); [ -n "$p" ] && echo "$s: $p"; done)
if [ "$(echo "$published" | grep -c .)" = 1 ] && echo "$published" | grep -q "^lb: .*127.0.0.1:$REPLIKV_PORT"; then
  ok "only the load balancer publishes a port, on 127.0.0.1 ($(echo $published))"
else fail "only the load balancer publishes a port" "published: $published"; fi
# A kv-backend is on its node's own network: its own Envoy reaches it, another
# node's Envoy cannot even resolve its name.
leaks=
for from in lb replica-1; do
  err=$(timeout 10 docker exec "$(container_of $from)" busybox wget -q -O /dev/null http://primary-kv:8080/api/ 2>&1)
  echo "$err" | grep -q 'bad address' || leaks="$leaks $from(${err:-answered})"
done
if ! timeout 10 docker exec "$(container_of primary)" busybox wget -q -O /dev/null http://primary-kv:8080/api/; then
  leaks="$leaks (the primary's own Envoy cannot reach primary-kv either: the check proves nothing)"
fi
if [ -z "$leaks" ]; then ok "primary-kv is reachable from the primary's Envoy only (lb, replica-1: bad address)"
else fail "kv-backend isolation" "primary-kv:8080 from:$leaks"; fi
# A forged shadow write, sent to a replica from inside the network, is refused.
forged=$(timeout 10 docker exec "$(container_of lb)" busybox wget -S -q -O /dev/null \
  --header 'X-Replication-Source: primary' --header 'X-Replication-Seq: 99' \
  --header 'X-Replication-Signature: 00' --post-data '{"forged":"1"}' \
  http://replica-1:10000/api/9/http/keyvals/default 2>&1 | grep -m1 'HTTP/' | tr -d '\r')
if echo "$forged" | grep -q ' 403'; then ok "a forged replication write to replica-1 gets 403"
else fail "a forged replication write is refused" "got: ${forged:-no answer}"; fi

say "1. a write through the load balancer is read from every node"
code=$(lb_write t1-key t1-value)
if [ "$code" != 201 ]; then
  fail "1. write through the load balancer" "POST got $code"
else
  bad=
  for n in "${NODES[@]}"; do
    got=
    for _ in $(seq 1 20); do
      got=$(node_get "$n" "/api/9/http/keyvals/faults?key=t1-key") && [ "$got" = '{"t1-key":"t1-value"}' ] && break
      sleep 0.5
    done
    info "$n: ${got:-no answer}"
    [ "$got" = '{"t1-key":"t1-value"}' ] || bad="$bad $n"
  done
  if [ -z "$bad" ]; then ok "1. a write through the load balancer is read from every node"
  else fail "1. a write through the load balancer is read from every node" "not readable within 10 s on:$bad" \
    "missing guarantee: the primary replicates every applied write to every replica"; fi
fi

say "2. kill replica-1's kv-backend during writes, start it again"
writer_start t2
sleep 1.5
docker kill "$(container_of replica-1-kv)" >/dev/null && info "killed replica-1-kv"
sleep 3
docker start "$(container_of replica-1-kv)" >/dev/null && info "started replica-1-kv"
wait_healthy 60 replica-1-kv replica-1 || true
sleep 1.5
writer_stop t2
check_acked "2. replica-1's kv-backend killed and restarted during writes: converged" t2 \
  "a replica that missed writes while down catches up from the primary's log (SPEC: never a silent skip)"

say "3. partition replica-2 from the cluster network during writes, reconnect it"
writer_start t3
sleep 1.5
r2=$(container_of replica-2)
docker network disconnect -f "$NET" "$r2" && info "disconnected replica-2 from $NET"
sleep 4
docker network connect --alias replica-2 "$NET" "$r2" && info "reconnected replica-2 to $NET"
sleep 3
writer_stop t3
check_acked "3. replica-2 partitioned and reconnected during writes: converged" t3 \
  "a replica cut off from the primary catches up once reachable again (shadow writes retried, or the log replayed)"

say "4. kill -9 the primary's kv-backend during writes, start it again"
writer_start t4
sleep 1.5
docker kill "$(container_of primary-kv)" >/dev/null && info "killed primary-kv (SIGKILL)"
sleep 2
docker start "$(container_of primary-kv)" >/dev/null && info "started primary-kv"
wait_healthy 60 primary-kv primary || true
sleep 1.5
writer_stop t4
lost=$(missing_on primary "$work/t4.acked")
if [ -n "$lost" ]; then
  fail "4. every write the primary acknowledged survives its kv-backend's SIGKILL" \
    "$(echo "$lost" | wc -l) acknowledged writes lost: $(echo $lost | cut -c1-200)" \
    "missing guarantee: a write is acknowledged only once durable (fsync)"
else
  ok "4. all $(wc -l <"$work/t4.acked") writes acknowledged around the primary's kv-backend SIGKILL survive on the primary"
fi
check_acked "4. after the primary's kv-backend restart: converged" t4 \
  "replicas catch up with writes the primary applied around its restart"

say "4b. replica-1's kv-backend is down while the primary's Envoy restarts, then comes back"
# The primary's in-memory retry queue is lost with its Envoy: only catch-up from
# the primary's durable log can bring replica-1 what it missed.
writer_start t4b
sleep 1
docker kill "$(container_of replica-1-kv)" >/dev/null && info "killed replica-1-kv"
sleep 1.5
docker restart -t 5 "$(container_of primary)" >/dev/null && info "restarted the primary's Envoy"
wait_healthy 60 primary || true
sleep 1.5
docker start "$(container_of replica-1-kv)" >/dev/null && info "started replica-1-kv"
wait_healthy 60 replica-1-kv replica-1 || true
sleep 1.5
writer_stop t4b
check_acked "4b. replica-1 missed writes across a restart of the primary's Envoy: converged" t4b \
  "a replica that missed writes catches up from the primary's durable log, not only from the filter's in-memory retries"

say "5. replica-1 restarts with an empty volume and catches up"
compose rm -s -f replica-1-kv >/dev/null 2>&1
docker volume rm "$(compose_project)_replica-1-data" >/dev/null && info "replica-1's kv-backend removed, its volume deleted"
compose up -d --no-deps replica-1-kv >/dev/null 2>&1 && info "replica-1-kv created again, empty"
wait_healthy 60 replica-1-kv replica-1 || true
info "replica-1 status: [$(status replica-1)], primary [$(status primary)]"
# New writes after the restart: what the replica then receives is far past its
# applied seq (0), so it has to catch up on everything before.
for i in $(seq -f '%04g' 1 10); do
  [ "$(lb_write "t5-$i" "v$i")" = 201 ] && echo "t5-$i" >>"$work/t5.acked"
done
cat "$work"/t2.acked "$work"/t3.acked "$work"/t4.acked "$work"/t4b.acked "$work"/t5.acked 2>/dev/null >"$work/all.acked"
hint="a replica that starts empty takes a snapshot (or replays the log) from the primary"
read -r h1 s1 <<<"$(status replica-1)"
read -r hp sp <<<"$(status primary)"
if [ "$h1" != "$hp" ] && [ "$s1" = 0 ]; then
  hint="$hint; replica-1 is still empty with its own history $h1 (primary: $hp, seq $sp), so every shadow write is refused (409)"
fi
check_acked "5. replica-1 started empty: caught up with every acknowledged write" all "$hint"

if [ "$failed" -gt 0 ]; then
  print_logs
fi

teardown

say "summary"
for f in "${failures[@]}"; do echo "  failed: $f"; done
echo "compose-verify: $passed passed, $failed failed"
summary_done=1
[ "$failed" -eq 0 ]
