#!/usr/bin/env bash
# Build tenantkit's base images from Debian packages with debootstrap, for hosts that
# cannot reach an image registry. Idempotent: an image that already exists is kept.
#   tenantkit/python-base:3.11        python3 + venv of Debian 12 bookworm (app image base)
#   tenantkit/python-base:3.13        python3 + venv of Debian 13 trixie   (app image base)
#   tenantkit/services-base:bookworm  postgresql + apache2  (db and proxy image base)
# Usage: build-bases.sh [PYTHON_VERSION ...]   (default: every version Debian ships)
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${TENANTKIT_BUILD_DIR:-/var/tmp/tenantkit-bases}
# The Python each Debian release ships: the only versions an offline host can have.
declare -A DEBIAN_RELEASE=([3.11]=bookworm [3.13]=trixie)

build() {  # build NAME RELEASE PACKAGES
    local name=$1 release=$2 packages=$3 dir
    if docker image inspect "$name" >/dev/null 2>&1; then
        echo "base image $name: present"
        return 0
    fi
    # Made by an earlier version of this script, under the Debian release's name.
    if [[ $name == tenantkit/python-base:* ]] && docker image inspect "tenantkit/python-base:$release" >/dev/null 2>&1; then
        docker tag "tenantkit/python-base:$release" "$name"
        echo "base image $name: tagged from tenantkit/python-base:$release"
        return 0
    fi
    dir="$WORK/$(echo "$name" | tr '/:' '__')"
    rm -rf "$dir" && mkdir -p "$dir"
    echo "base image $name: debootstrap $release ($packages)"
    debootstrap --variant=minbase --include="$packages" "$release" "$dir" "$MIRROR" \
        >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; return 1; }
    # Keep the image small: package caches and docs are not needed at run time.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
    tar -C "$dir" -c . | docker import -c "LABEL tenantkit.debian=$release" - "$name" >/dev/null
    rm -rf "$dir"
    echo "base image $name: imported"
}

command -v debootstrap >/dev/null || {
    echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 2; }
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("${!DEBIAN_RELEASE[@]}")
for version in "${versions[@]}"; do
    [ -n "${DEBIAN_RELEASE[$version]:-}" ] || {
        echo "no offline base for Python $version: Debian ships ${!DEBIAN_RELEASE[*]}" >&2; exit 2; }
done
mkdir -p "$WORK"
pids=()
for version in "${versions[@]}"; do
    build "tenantkit/python-base:$version" "${DEBIAN_RELEASE[$version]}" python3,python3-venv &
    pids+=($!)
done
build tenantkit/services-base:bookworm bookworm postgresql,apache2,libapache2-mod-wsgi-py3,python3 &
pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
