#!/usr/bin/env bash
# Installs and starts what `make compose-*` needs, idempotently: Debian's
# docker.io (the engine, 20.10) and docker-compose (1.29), and a running dockerd.
# Safe to run again: it installs only what is missing and starts dockerd only
# when /var/run/docker.sock does not answer. Needs root (CI and these machines
# run as root); on a machine with Docker already set up it does nothing.
set -euo pipefail

log() { echo "compose-prereqs: $*" >&2; }
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  log "dockerd is running"
  exit 0
fi

# A dockerd that was killed (as at the end of a session) leaves its pid file
# behind, and a new one refuses to start while it exists.
for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      log "removing stale $pidfile"
      $SUDO rm -f "$pidfile"
    fi
  fi
done

# No init system on these machines: start dockerd in the background, detached
# from this shell, with its log in /var/log/dockerd.log.
log "starting dockerd (log: /var/log/dockerd.log)"
$SUDO sh -c 'nohup setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null & echo $! >/var/run/replikv-dockerd.pid'
for _ in $(seq 1 60); do
  if [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1; then
    log "dockerd is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    exit 0
  fi
  kill -0 "$(cat /var/run/replikv-dockerd.pid)" 2>/dev/null || break
  sleep 1
done
log "dockerd did not start or did not answer on /var/run/docker.sock within 60 s; last log lines:"
tail -n 30 /var/log/dockerd.log >&2 || true
exit 1
