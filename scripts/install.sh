#!/usr/bin/env bash
# Create ./.venv and install semimer into it.  Usage: bash scripts/install.sh [test]
#   (no argument)  the core package: enough for `semimer demo`, train, evaluate
#   test           + extraction extras and the test tools (what CI uses)
# torch is pinned to the CPU wheel first: an unpinned torch can resolve to a multi-GB CUDA build.
# On a GPU machine, install the CUDA torch build of your choice first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -e ".[test,extract]"
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -c "import semimer, torch; print('semimer', semimer.__version__, '| torch', torch.__version__)"
