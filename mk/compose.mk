# Container targets (docker compose). Owned by the compose work; included by the Makefile.
#
#   make compose-build   binaries (`make build envoy`), Envoy configs rendered from
#                        envoy/*.yaml.j2, then the image replikv:local, no registry needed
#   make compose-up      docker compose up -d, waits until every service is healthy
#   make compose-down    docker compose down -v (containers, networks and data volumes)
#   make compose-test    scripts/compose-verify.sh: the README steps and the fault tests
#   make compose-prereqs installs Debian's docker.io + docker-compose and starts dockerd
#
# COMPOSE picks the client (default: `docker compose` if present, else
# `docker-compose`); REPLIKV_BASE_IMAGE=debian:bookworm-slim builds on a distro
# base where a registry is reachable.

.PHONY: docker-running compose-prereqs compose-build compose-image compose-up compose-down compose-logs compose-test

compose-prereqs:
	scripts/compose-prereqs.sh

compose-build: build envoy
	$(MAKE) --no-print-directory compose-image

# The image alone, from binaries already built.
compose-image:
	ENVOY_BIN="$(ENVOY_BIN)" docker/build-image.sh

compose-up:
	scripts/compose-up.sh

# Stopping needs no secret, but compose refuses the file without one.
compose-down compose-logs: export REPLIKV_SECRET ?= not-needed-to-stop

compose-down:
	bash -c '. scripts/compose-lib.sh && compose down -v --remove-orphans'

compose-logs:
	bash -c '. scripts/compose-lib.sh && compose logs -f'

compose-test: docker-running compose-build
	scripts/compose-verify.sh

# Fails early, with the way out, where Docker is missing or not started.
docker-running:
	@docker info >/dev/null 2>&1 || { echo "docker is not running: scripts/compose-prereqs.sh installs and starts it (make compose-prereqs)" >&2; exit 1; }
