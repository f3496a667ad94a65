#!/usr/bin/env bash
# One command on a fresh machine: install, then run the whole test suite (CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/python -m pytest "$@"
