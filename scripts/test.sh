#!/usr/bin/env bash
# One command on a fresh machine: install, then run the whole test suite (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# Two workers by default (AQUAMVS_TEST_WORKERS=0: one process); the scale-out tests share their
# servers and stay together on one worker (xdist_group "scaleout").
exec .venv/bin/python -m pytest -n "${AQUAMVS_TEST_WORKERS:-2}" --dist loadgroup "$@"
