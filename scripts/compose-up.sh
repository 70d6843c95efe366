#!/usr/bin/env bash
# `make compose-up`: starts docker-compose.yml detached and waits (bounded) until
# every service is healthy. Foreground alternative: `docker compose up`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/compose-lib.sh

timeout=${REPLIKV_UP_TIMEOUT:-120}
if [ -z "${REPLIKV_SECRET:-}" ] && ! grep -qs '^REPLIKV_SECRET=..*' .env; then
  echo "compose-up: no replication secret: cp .env.example .env and set REPLIKV_SECRET in it (or export it)" >&2
  exit 1
fi
if ! docker image inspect "${REPLIKV_IMAGE:-replikv:local}" >/dev/null 2>&1; then
  echo "compose-up: image ${REPLIKV_IMAGE:-replikv:local} not found: run \`make compose-build\` first" >&2
  exit 1
fi
compose up -d "$@"
if ! wait_healthy "$timeout" "${COMPOSE_SERVICES[@]}"; then
  compose ps >&2
  compose logs --tail 30 >&2
  exit 1
fi
port=$(compose port lb 10000 2>/dev/null | tail -n 1)
cat <<MSG
replikv is up (project $(compose_project)):
  load balancer  http://${port:-127.0.0.1:${REPLIKV_PORT:-10000}}

Try:
  curl -i -X POST -d '{"greeting":"hello"}' http://${port:-127.0.0.1:10000}/api/9/http/keyvals/default
  curl -s http://${port:-127.0.0.1:10000}/replicated/9/http/keyvals/default?key=greeting

Logs: ${compose_cmd[*]} logs -f    Stop: make compose-down
MSG
