# Shared by scripts/compose-*.sh (sourced, not run). Works with Docker Compose v2
# (`docker compose`) and Debian's docker-compose 1.29.

# The compose command: $COMPOSE if set, else `docker compose`, else `docker-compose`.
if [ -n "${COMPOSE:-}" ]; then
  read -r -a compose_cmd <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  compose_cmd=(docker-compose)
fi
compose() { "${compose_cmd[@]}" "$@"; }

# The project: $COMPOSE_PROJECT_NAME, else the one .env sets, else replikv
# (exported, so that compose and these helpers agree).
if [ -z "${COMPOSE_PROJECT_NAME:-}" ]; then
  COMPOSE_PROJECT_NAME=$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' .env 2>/dev/null | tail -n 1)
  export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-replikv}
fi

# The project name as compose normalises it (v1 and v2 agree for plain names).
compose_project() {
  local p=$COMPOSE_PROJECT_NAME
  echo "$p" | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9_-'
}

# container_of SERVICE: the id of the service's container, running or not.
container_of() {
  docker ps -aq --filter "label=com.docker.compose.project=$(compose_project)" \
    --filter "label=com.docker.compose.service=$1" | head -n 1
}

# health_of SERVICE: healthy, unhealthy, starting, or the state when not running.
health_of() {
  local id
  id=$(container_of "$1")
  [ -n "$id" ] || { echo missing; return; }
  docker inspect -f '{{if .State.Running}}{{if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing
}

# wait_healthy TIMEOUT_S SERVICE...: waits until every service is healthy.
wait_healthy() {
  local timeout=$1 s pending
  shift
  local deadline=$(( $(date +%s) + timeout ))
  while :; do
    pending=
    for s in "$@"; do
      [ "$(health_of "$s")" = healthy ] || pending="$pending $s($(health_of "$s"))"
    done
    [ -z "$pending" ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "not healthy after ${timeout} s:$pending" >&2
      return 1
    fi
    sleep 1
  done
}

COMPOSE_SERVICES=(lb primary primary-kv replica-1 replica-1-kv replica-2 replica-2-kv)
