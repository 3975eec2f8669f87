#!/usr/bin/env bash
# Set up, then run every test: the suite under tests/, then the tutorial notebooks (nbval)
# against an embedded backend of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
(cd labextension && npm test --silent)
python -m pytest -q -p no:cacheprovider tests "$@"
notebook_home=$(mktemp -d)
trap 'WML_HOME=$notebook_home wml backend stop >/dev/null 2>&1 || true' EXIT
WML_HOME=$notebook_home python -m pytest -q -p no:cacheprovider --nbval-lax notebooks
