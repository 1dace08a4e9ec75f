#!/usr/bin/env bash
# Make sure Debian's ejabberd is installed, for the benchmark (bench/servers.py runs a private
# instance of it with its own configuration, spool and port). The system's ejabberd service is kept
# from running, as scripts/ensure-prosody.sh does for Prosody: apt is told not to start it
# (policy-rc.d), and it is stopped and disabled afterwards in case it was started anyway.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v ejabberdctl >/dev/null; then
    exit 0
fi

echo "ensure-ejabberd: installing ejabberd from Debian"
policy=/usr/sbin/policy-rc.d
made_policy=false
if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    made_policy=true
fi
output=$(mktemp)
cleanup() { if $made_policy; then as_root rm -f "$policy"; fi; rm -f "$output"; }
trap cleanup EXIT

if ! { as_root apt-get update -qq &&
       as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ejabberd; } \
       >"$output" 2>&1; then
    cat "$output" >&2
    echo "ensure-ejabberd: apt-get failed" >&2
    exit 1
fi

if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now ejabberd >/dev/null 2>&1 || true
else
    as_root systemctl disable ejabberd >/dev/null 2>&1 || true
    if [ -x /etc/init.d/ejabberd ]; then
        as_root /etc/init.d/ejabberd stop >/dev/null 2>&1 || true
    fi
fi

command -v ejabberdctl >/dev/null || { echo "ensure-ejabberd: ejabberdctl is still missing after apt-get install" >&2; exit 1; }
