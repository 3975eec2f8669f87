#!/usr/bin/env bash
# Create .venv (if needed) and install the client, the backend and the test tools into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q -U pip
# torch 2.13.0 is the CPU build on this machine's disk; an unpinned torch would download a CUDA build.
# The four distributions by layer (backend/core, backend/runner, backend/server, the client at the root).
python -m pip install -q "torch==2.13.0" -e ./backend/core -e ./backend/runner \
  -e "./backend/server[postgres,kubernetes]" -e ".[test]"
