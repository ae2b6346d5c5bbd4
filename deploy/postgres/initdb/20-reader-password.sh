#!/usr/bin/env bash
# Give the read-only role personyze_reader (created by 10-shop.sql) the password in
# PG_PASSWORD, which deploy/docker-compose.yml passes to both this container and the sync.
set -euo pipefail
: "${PG_PASSWORD:?PG_PASSWORD must be set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v reader_password="$PG_PASSWORD" <<'SQL'
ALTER ROLE personyze_reader PASSWORD :'reader_password';
SQL
