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
# The load balancer's port must be free (unless it is this project's own lb).
port=${REPLIKV_PORT:-$(sed -n 's/^REPLIKV_PORT=//p' .env 2>/dev/null | tail -n 1)}
port=${port:-10000}
if [ "$(health_of lb)" != healthy ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "compose-up: 127.0.0.1:$port is already in use (is \`make up\` running?): stop it or set REPLIKV_PORT" >&2
  exit 1
fi
compose up -d "$@"
if ! wait_healthy "$timeout" "${COMPOSE_SERVICES[@]}"; then
  compose ps >&2
  compose logs --tail 30 >&2
  exit 1
fi
addr=$(compose port lb 10000 2>/dev/null | tail -n 1)
cat <<MSG
replikv is up (project $(compose_project)):
  load balancer  http://${addr:-127.0.0.1:$port}

Try:
  curl -i -X POST -d '{"greeting":"hello"}' http://${addr:-127.0.0.1:$port}/api/9/http/keyvals/default
  curl -s http://${addr:-127.0.0.1:$port}/replicated/9/http/keyvals/default?key=greeting

Logs: ${compose_cmd[*]} logs -f    Stop: make compose-down
MSG
