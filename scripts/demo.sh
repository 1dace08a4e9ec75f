#!/usr/bin/env bash
# Set up and start a development server for localhost: SQLite in ./dev-data, a self-signed certificate,
# and the account demo@localhost whose fresh password is printed. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/xmppd --demo dev-data
