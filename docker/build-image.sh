#!/usr/bin/env bash
# Builds the image of docker-compose.yml (replikv:local by default) without any
# image registry, from what `make build envoy` produced:
#   target/wasm32-wasip1/release/replikv_filter.wasm, target/release/kv-backend,
#   target/release/replikv-up (renders the Envoy configs), $ENVOY_BIN.
#
# Environment:
#   ENVOY_BIN            the pinned Envoy (default: envoy on PATH, else .envoy/bin/envoy)
#   REPLIKV_IMAGE        image to build (default replikv:local)
#   REPLIKV_BASE_IMAGE   base image (default replikv-base:local, made here FROM
#                        scratch with the glibc files `ldd` lists); set e.g.
#                        debian:bookworm-slim where a registry is reachable
#   REPLIKV_REPLICAS     replica nodes to render configs for (default 2, as in
#                        docker-compose.yml)
#   BUSYBOX              a static busybox to put in the image (default: taken
#                        from Debian's busybox-static package with `apt-get download`)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "build-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

IMAGE=${REPLIKV_IMAGE:-replikv:local}
BASE=${REPLIKV_BASE_IMAGE:-replikv-base:local}
REPLICAS=${REPLIKV_REPLICAS:-2}
ENVOY_BIN=${ENVOY_BIN:-$(command -v envoy 2>/dev/null || echo "$PWD/.envoy/bin/envoy")}
WASM=target/wasm32-wasip1/release/replikv_filter.wasm
KV=target/release/kv-backend
UP=target/release/replikv-up
OUT=target/compose

for f in "$ENVOY_BIN" "$WASM" "$KV" "$UP"; do
  [ -f "$f" ] || die "$f is missing: run \`make build envoy\` first"
done
command -v docker >/dev/null || die "docker is not installed (scripts/compose-prereqs.sh installs it)"

# --- busybox -----------------------------------------------------------------
busybox=${BUSYBOX:-}
if [ -z "$busybox" ]; then
  busybox=$OUT/busybox/bin/busybox
  if [ ! -x "$busybox" ]; then
    command -v apt-get >/dev/null || die "no apt-get: set BUSYBOX to a statically linked busybox"
    log "fetching Debian's busybox-static package"
    rm -rf "$OUT/busybox" && mkdir -p "$OUT/busybox"
    # apt drops privileges to _apt and needs a folder it can write to.
    dl=$(mktemp -d) && chmod 777 "$dl"
    (cd "$dl" && apt-get download -q busybox-static >/dev/null) \
      || die "apt-get download busybox-static failed (run apt-get update, or set BUSYBOX)"
    dpkg-deb -x "$dl"/busybox-static_*.deb "$OUT/busybox/pkg"
    rm -rf "$dl"
    mv "$OUT/busybox/pkg/bin" "$OUT/busybox/bin"
  fi
fi
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' \
  || ldd "$busybox" 2>&1 | grep -q 'not a dynamic executable' \
  || die "$busybox is not statically linked"

# --- the locally made base: FROM scratch + glibc ------------------------------
if [ "$BASE" = replikv-base:local ]; then
  ctx=$OUT/base
  rm -rf "$ctx" && mkdir -p "$ctx/rootfs"/{etc,tmp}
  chmod 1777 "$ctx/rootfs/tmp"
  # Every shared library the two binaries load, at the path ldd resolved it to
  # (symlinks followed), and the dynamic loader at the path the ELF names.
  libs=$( { ldd "$ENVOY_BIN"; ldd "$KV"; } | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
  [ -n "$libs" ] || die "ldd listed no libraries"
  for lib in $libs; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  # the loader must also sit at /lib64/ld-linux-x86-64.so.2 (the ELF interpreter)
  if [ ! -e "$ctx/rootfs/lib64/ld-linux-x86-64.so.2" ]; then
    mkdir -p "$ctx/rootfs/lib64" && cp -L /lib64/ld-linux-x86-64.so.2 "$ctx/rootfs/lib64/"
  fi
  printf 'root:x:0:0:root:/root:/sbin/nologin\nreplikv:x:10001:10001:replikv:/data:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nreplikv:x:10001:\n' >"$ctx/rootfs/etc/group"
  printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
  log "building $BASE from scratch with $(echo "$libs" | wc -l) glibc files: $(echo $libs)"
  docker build -q -f docker/Dockerfile.base -t "$BASE" "$ctx" >/dev/null
fi

# --- the image -----------------------------------------------------------------
ctx=$OUT/image
rm -rf "$ctx" && mkdir -p "$ctx/bin" "$ctx/data"
cp -L "$ENVOY_BIN" "$ctx/bin/envoy"
cp "$KV" "$ctx/bin/kv-backend"
cp "$busybox" "$ctx/bin/busybox"
cp "$WASM" "$ctx/replikv_filter.wasm"
"$UP" --replicas "$REPLICAS" render --target compose \
  --wasm /etc/replikv/replikv_filter.wasm --out "$ctx/envoy" >/dev/null
log "building $IMAGE on $BASE ($(du -sh "$ctx" | cut -f1) of binaries and configs)"
docker build -q --build-arg "BASE=$BASE" -f docker/Dockerfile -t "$IMAGE" "$ctx" >/dev/null

# A smoke check: every binary starts in the image (a missing glibc file fails here).
version=$(docker run --rm --entrypoint /usr/local/bin/envoy "$IMAGE" --version) || true
echo "$version" | grep -q '/1\.40\.' || die "envoy does not run in $IMAGE: ${version:-no output}"
docker run --rm --entrypoint /usr/local/bin/kv-backend "$IMAGE" --version >/dev/null \
  || die "kv-backend does not run in $IMAGE"
docker run --rm --entrypoint /usr/local/bin/busybox "$IMAGE" true \
  || die "busybox does not run in $IMAGE"
# Earlier builds of these images, now untagged.
docker image prune -f --filter label=org.opencontainers.image.title=replikv >/dev/null 2>&1 || true
docker image prune -f --filter label=org.opencontainers.image.title=replikv-base >/dev/null 2>&1 || true
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
