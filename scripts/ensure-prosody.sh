#!/usr/bin/env bash
# Make sure Debian's Prosody and prosody-modules (for mod_cloud_notify) are installed, for
# tests/test_appserver_prosody.py, which runs Prosody itself from a temporary configuration.
# The system's Prosody service is kept from running: apt is told not to start it (policy-rc.d),
# and it is stopped and disabled afterwards in case it was started anyway. Idempotent and quiet.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

have_prosody() { command -v prosody >/dev/null && command -v prosodyctl >/dev/null; }
have_modules() { dpkg-query -W -f='${Status}' prosody-modules 2>/dev/null | grep -q "install ok installed"; }

if have_prosody && have_modules; then
    exit 0
fi

echo "ensure-prosody: installing prosody and prosody-modules from Debian"
# Keep apt's maintainer scripts from starting the service: a policy-rc.d that says 101 ("action
# forbidden"), unless the machine already has one (Docker images ship one that does just that).
policy=/usr/sbin/policy-rc.d
made_policy=false
if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    made_policy=true
fi
output=$(mktemp)
cleanup() { if $made_policy; then as_root rm -f "$policy"; fi; rm -f "$output"; }
trap cleanup EXIT

# apt's chatter (debconf notes and the like) is shown only when something fails.
if ! { as_root apt-get update -qq &&
       as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           prosody prosody-modules; } >"$output" 2>&1; then
    cat "$output" >&2
    echo "ensure-prosody: apt-get failed" >&2
    exit 1
fi

# Not left running, and not started at boot (either may fail where there is no init system: fine).
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prosody >/dev/null 2>&1 || true
else
    as_root systemctl disable prosody >/dev/null 2>&1 || true
    if [ -x /etc/init.d/prosody ]; then
        as_root /etc/init.d/prosody stop >/dev/null 2>&1 || true
    fi
fi

have_prosody || { echo "ensure-prosody: prosody is still missing after apt-get install" >&2; exit 1; }
