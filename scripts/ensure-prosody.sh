#!/usr/bin/env bash
# Make sure Debian's Prosody and prosody-modules (for mod_cloud_notify) are installed, for
# tests/test_appserver_prosody.py, which runs Prosody itself from a temporary configuration. The
# system's Prosody service is kept from running (install-stopped-service.sh). Idempotent and quiet.
set -euo pipefail
cd "$(dirname "$0")"

have_prosody() { command -v prosody >/dev/null && command -v prosodyctl >/dev/null; }
have_modules() { dpkg-query -W -f='${Status}' prosody-modules 2>/dev/null | grep -q "install ok installed"; }

if have_prosody && have_modules; then
    exit 0
fi
bash install-stopped-service.sh prosody prosody prosody-modules
have_prosody || { echo "ensure-prosody: prosody is still missing after apt-get install" >&2; exit 1; }
