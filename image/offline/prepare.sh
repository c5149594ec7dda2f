#!/usr/bin/env bash
# Prepare a host that cannot reach an image registry: build the base images and the
# PostgreSQL image locally, download the Python wheels on the host, and point
# tenantkit.local.yaml at them. Does nothing when the registry is reachable, and
# skips every step that is already done.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { echo "offline: $*" >&2; }
PYTHON=${PYTHON:-python3}

if [ "${TENANTKIT_OFFLINE:-auto}" = auto ]; then
    if timeout 20 docker pull -q python:3.11-slim >/dev/null 2>&1; then
        say "an image registry is reachable: using the images named in tenantkit.yaml"
        exit 0
    fi
    say "no image registry is reachable: building images locally"
fi

command -v debootstrap >/dev/null || {
    say "installing debootstrap"; apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
bash image/offline/build-bases.sh

# The PostgreSQL image, rebuilt when its files change.
db_digest=$(cat image/db/Dockerfile image/db/docker-entrypoint.sh | sha256sum | cut -c1-12)
if [ "$(docker image inspect -f '{{index .Config.Labels "tenantkit.source"}}' tenantkit/postgres:15 2>/dev/null)" != "$db_digest" ]; then
    say "building tenantkit/postgres:15"
    docker build -q --label "tenantkit.source=$db_digest" -t tenantkit/postgres:15 image/db >/dev/null
fi

# Wheels for the app image, for the Python in the base image (3.11 on bookworm).
requirements=$("$PYTHON" - <<'PY'
import sys
sys.path.insert(0, "tools")
from pathlib import Path
from tenantkit.model import load_project
print(load_project(Path(".")).requirements)
PY
)
stamp=.wheelhouse/.requirements
want=$(cat "$requirements" image/app/runtime.txt | sha256sum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "downloading wheels into .wheelhouse/"
    rm -rf .wheelhouse && mkdir -p .wheelhouse
    PIP_FIND_LINKS= "$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --implementation cp \
        -d .wheelhouse -r "$requirements" -r image/app/runtime.txt
    echo "$want" >"$stamp"
fi

marker="# Written by image/offline/prepare.sh"
if [ ! -f tenantkit.local.yaml ] || head -1 tenantkit.local.yaml | grep -q "^$marker"; then
    say "writing tenantkit.local.yaml"
    cat >tenantkit.local.yaml <<'YAML'
# Written by image/offline/prepare.sh: this host has no image registry, so it uses
# locally built images and a local wheelhouse. Delete this file to use the registry.
images:
  base: tenantkit/python-base:bookworm
  db: tenantkit/postgres:15
  proxy_base: tenantkit/services-base:bookworm
wheelhouse: .wheelhouse
YAML
fi
