#!/usr/bin/env bash
# Set up everything the tests need (PostgreSQL, Prosody, .venv with the test extras) and run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k login -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgresql.sh
bash scripts/ensure-prosody.sh       # the push app server is tested as a component of a real Prosody
bash scripts/bootstrap.sh test
exec .venv/bin/python -m pytest "$@"
