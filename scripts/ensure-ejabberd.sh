#!/usr/bin/env bash
# Make sure Debian's ejabberd is installed, for the benchmark (bench/servers.py runs a private
# instance of it with its own configuration, spool and port). The system's ejabberd service is kept
# from running (install-stopped-service.sh). Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")"

if command -v ejabberdctl >/dev/null; then
    exit 0
fi
bash install-stopped-service.sh ejabberd ejabberd
command -v ejabberdctl >/dev/null || { echo "ensure-ejabberd: ejabberdctl is still missing after apt-get install" >&2; exit 1; }
