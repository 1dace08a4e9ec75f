#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 with a database `test` that user postgres can
# use without a password (what the test suite expects). If nothing answers, install Debian's PostgreSQL,
# start its cluster, and allow password-less connections from this machine only — do this on test
# machines, not on a production database host.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
answers() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }

if ! answers; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        echo "ensure-postgresql: installing PostgreSQL from Debian"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    if ! as_root grep -q "xmppd-tests" "$hba"; then
        as_root sed -i '1i host all all 127.0.0.1/32 trust # xmppd-tests\nhost all all ::1/128 trust # xmppd-tests' "$hba"
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    for _ in $(seq 1 30); do answers && break; sleep 1; done
    answers || { echo "ensure-postgresql: PostgreSQL did not start" >&2; exit 1; }
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE test"
fi
