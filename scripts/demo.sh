#!/usr/bin/env bash
# One command on a fresh machine: install, generate the built-in synthetic survey if missing,
# register its frames as partitions and materialize the ingestion job through Dagster
# (SQLite instance in ./.dagster_home). Extra arguments go to `aquamvs demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
exec .venv/bin/aquamvs demo "$@"
