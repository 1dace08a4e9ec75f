#!/usr/bin/env bash
# Create .venv and install xmppd into it (with the test tools when called as `bootstrap.sh test`).
# Works on a fresh Debian 12 (Python 3.11): installs python3-venv first if the interpreter lacks it.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "bootstrap: installing python3-venv (Debian keeps venv in its own package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras}"
