#!/usr/bin/env bash
# The main job: set up, then execute the quickstart notebook headless on the embedded backend
# (upload digits, a real 8-run sweep of a PyTorch MLP, compare, download and evaluate the best).
# The executed notebook, with its plots, is left in build/01-quickstart.ipynb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
jupyter nbconvert --to notebook --execute notebooks/01-quickstart.ipynb --output-dir build \
  --ExecutePreprocessor.timeout=600
echo "executed notebook: build/01-quickstart.ipynb"
wml list
exp=$(wml list --json | python -c "import json, sys; print(json.load(sys.stdin)[0]['id'])")
wml show "$exp"
