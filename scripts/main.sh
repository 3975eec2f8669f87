#!/usr/bin/env bash
# The main job: set up, start the embedded backend, upload scikit-learn's digits and run a real
# sweep of a small PyTorch MLP, then print the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
data=$(mktemp -d)
python examples/digits/make_data.py "$data"
wml backend start
wml upload "$data" digits
exp=$(wml train examples/digits/manifest.yml examples/digits --wait | tail -n 1)
wml show "$exp"
wml usage
