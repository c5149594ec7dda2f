#!/usr/bin/env bash
# Build tenantkit's base images from Debian packages with debootstrap, for hosts that
# cannot reach an image registry. Idempotent: an image that already exists is kept.
#   tenantkit/python-base:bookworm    python3 + venv        (app image base)
#   tenantkit/services-base:bookworm  postgresql + apache2  (db and proxy image base)
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${TENANTKIT_BUILD_DIR:-/var/tmp/tenantkit-bases}

build() {  # build NAME PACKAGES
    local name=$1 packages=$2 dir
    if docker image inspect "$name" >/dev/null 2>&1; then
        echo "base image $name: present"
        return 0
    fi
    dir="$WORK/$(echo "$name" | tr '/:' '__')"
    rm -rf "$dir" && mkdir -p "$dir"
    echo "base image $name: debootstrap ($packages)"
    debootstrap --variant=minbase --include="$packages" bookworm "$dir" "$MIRROR" \
        >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; return 1; }
    # Keep the image small: package caches and docs are not needed at run time.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
    tar -C "$dir" -c . | docker import - "$name" >/dev/null
    rm -rf "$dir"
    echo "base image $name: imported"
}

command -v debootstrap >/dev/null || {
    echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 2; }
mkdir -p "$WORK"
build tenantkit/python-base:bookworm python3,python3-venv &
p1=$!
build tenantkit/services-base:bookworm postgresql,apache2,libapache2-mod-wsgi-py3,python3 &
p2=$!
wait $p1 && wait $p2
