#!/usr/bin/env bash
# Install Debian packages whose daemon must not run as a system service here: the tests and the
# benchmark run their own private instances (scripts/ensure-prosody.sh, scripts/ensure-ejabberd.sh).
#   bash scripts/install-stopped-service.sh SERVICE PACKAGE...
# apt's maintainer scripts are told not to start anything (a policy-rc.d that answers 101, "action
# forbidden", unless the machine already has one; Docker images ship one that does just that), and
# SERVICE is stopped and disabled afterwards in case it was started anyway. apt's chatter (debconf
# notes and the like) is shown only when something fails.
set -euo pipefail

service=$1
shift
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "install-stopped-service: installing $* from Debian"
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
       as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } \
       >"$output" 2>&1; then
    cat "$output" >&2
    echo "install-stopped-service: apt-get install $* failed" >&2
    exit 1
fi

# Not left running, and not started at boot (either may fail where there is no init system: fine).
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now "$service" >/dev/null 2>&1 || true
else
    as_root systemctl disable "$service" >/dev/null 2>&1 || true
    if [ -x "/etc/init.d/$service" ]; then
        as_root "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    fi
fi
