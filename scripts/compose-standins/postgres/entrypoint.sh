#!/bin/bash
# A stand-in for the official postgres image's entrypoint: POSTGRES_USER,
# POSTGRES_PASSWORD and /docker-entrypoint-initdb.d on the first start.
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp); echo "$POSTGRES_PASSWORD" > "$pwfile"
  "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses='' -k /tmp" -w start >/dev/null
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sql) psql -h /tmp -U "$POSTGRES_USER" -d postgres -v ON_ERROR_STOP=1 -f "$f" ;;
      *.sh) . "$f" ;;
    esac
  done
  "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
# As the official image: `postgres -c name=value ...` passes the options on.
[ "${1:-}" = postgres ] && shift
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -k /tmp "$@"
