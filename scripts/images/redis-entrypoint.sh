#!/bin/sh
# ENTRYPOINT of the local Redis test image (freeport-test-redis, built by scripts/setup.sh from
# Debian's redis-server). Like the official redis image: `redis-server ...` (or just options, or
# a config file) runs in the foreground as the redis user, reachable from outside the container
# (the official image builds Redis with protected mode off). Here that takes options: unless a
# config file is given, `--bind 0.0.0.0 --protected-mode no` go first, so options that follow
# (the command's own) still win. redis-server replaces this script as PID 1, so SIGTERM reaches it.
# Any other command (`redis-cli ...`, `sh`) just runs.
set -eu

# `docker run IMAGE --maxmemory 10mb` or `docker run IMAGE /etc/redis.conf`: arguments of redis-server.
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi
if [ "$1" != redis-server ]; then
    exec "$@"
fi

shift
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- redis-server --bind 0.0.0.0 --protected-mode no "$@"
else
    set -- redis-server "$@"  # a config file: it says where to listen
fi
if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
