#!/bin/sh
# ENTRYPOINT of the local PostgreSQL test image (freeport-test-postgres, built by scripts/setup.sh
# from Debian's postgresql-15). Does what the official postgres image's entrypoint does for the
# variables it reads, so a Compose file works the same with either image:
#   POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_USER (default
#   postgres), POSTGRES_DB (default: the user), POSTGRES_HOST_AUTH_METHOD (default scram-sha-256),
#   POSTGRES_INITDB_ARGS, PGDATA (default /var/lib/postgresql/data).
# On the first start (no PG_VERSION in $PGDATA) it runs initdb with that superuser and password,
# creates the database, allows password logins from any address and listens on 0.0.0.0:5432.
# Then postgres replaces this script as PID 1, as the postgres user, so `docker stop` (SIGINT, the
# image's STOPSIGNAL) reaches it directly. Any other command (`psql ...`, `sh`) just runs.
# Not supported: /docker-entrypoint-initdb.d scripts.
set -eu

# `docker run IMAGE -c fsync=off`: options for postgres.
if [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# As root: make the data and socket directories the postgres user's (a tmpfs or a fresh volume
# is root's), then start again as postgres.
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chmod 00700 "$PGDATA"
    chmod 02775 /run/postgresql
    find "$PGDATA" /run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "postgres-entrypoint: the database is uninitialized and POSTGRES_PASSWORD is not set" >&2
        echo "postgres-entrypoint: set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
    pwopt=--pwfile=$pwfile
    [ -n "${POSTGRES_PASSWORD:-}" ] || pwopt=
    # Local (socket) logins are trusted inside the container, as in the official image.
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words, as in the official image
    initdb --username="$user" $pwopt --auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$pwfile"
    trap - EXIT
    printf 'host all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"
    printf "listen_addresses = '0.0.0.0'\n" >> "$PGDATA/postgresql.conf"
    if [ "$db" != postgres ]; then
        # Single-user mode: no server to start and stop just to create the database.
        # The name is quoted as an identifier ("" doubles a quote inside it).
        quoted=$(printf '%s' "$db" | sed 's/"/""/g')
        if ! out=$(printf 'CREATE DATABASE "%s"\n' "$quoted" | postgres --single -D "$PGDATA" postgres 2>&1) \
            || printf '%s\n' "$out" | grep -q -e 'ERROR:' -e 'FATAL:'; then
            printf '%s\n' "$out" >&2
            echo "postgres-entrypoint: could not create database $db" >&2
            exit 1
        fi
    fi
    echo "postgres-entrypoint: initialized $PGDATA (superuser $user, database $db)" >&2
fi

exec "$@"
