#!/usr/bin/env bash
# Prepare a host that cannot reach an image registry: build the base images (Python 3.11
# and 3.13, PostgreSQL, Apache) and the PostgreSQL image locally, and point
# tenantkit.local.yaml at them and at a wheelhouse that `tenant build` fills on the host.
# Does nothing when the registry is reachable, and skips every step that is already done.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { echo "offline: $*" >&2; }

if [ "${TENANTKIT_OFFLINE:-auto}" = auto ]; then
    if timeout 20 docker pull -q python:3.13-slim >/dev/null 2>&1; then
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

# Wheels: `tenant build` fetches them on the host into .wheelhouse/ (one folder per Python
# version and set of requirements, see tools/tenantkit/act/wheels.py). Wheels an earlier
# version of this script put in .wheelhouse/ itself would be taken as a hand-made
# wheelhouse for every Python: they go.
if [ -f .wheelhouse/.requirements ]; then
    say "moving to a wheelhouse per Python version"
    rm -f .wheelhouse/*.whl .wheelhouse/.requirements
fi

marker="# Written by image/offline/prepare.sh"
if [ ! -f tenantkit.local.yaml ] || head -1 tenantkit.local.yaml | grep -q "^$marker"; then
    say "writing tenantkit.local.yaml"
    cat >tenantkit.local.yaml <<'YAML'
# Written by image/offline/prepare.sh: this host has no image registry, so it uses
# locally built images and a local wheelhouse. Delete this file to use the registry.
# {python} is images.python: Debian's Python 3.11 (bookworm) or 3.13 (trixie).
images:
  base: "tenantkit/python-base:{python}"
  db: tenantkit/postgres:15
  proxy_base: tenantkit/services-base:bookworm
wheelhouse: .wheelhouse
YAML
fi
