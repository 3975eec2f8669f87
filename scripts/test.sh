#!/usr/bin/env bash
# Set up, then run every test: the sidebar's jest tests, the suite under tests/ (the Kubernetes
# tests against a real control plane that this script starts), then the tutorial notebooks
# (nbval) against an embedded backend of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
(cd labextension && npm test --silent)
notebook_home=$(mktemp -d)
cleanup() {
  WML_HOME=$notebook_home wml backend stop >/dev/null 2>&1 || true
  bash scripts/kube-down.sh >/dev/null 2>&1 || true
}
trap cleanup EXIT
# The test cluster (scripts/kube-up.sh): built from the Go module proxy on first use (about
# 12 minutes on 2 cores, then cached), started in seconds, shared by tests/k8s and tutorial 03.
started=$SECONDS
eval "$(bash scripts/kube-up.sh)"
echo "test cluster up in $((SECONDS - started)) s" >&2
# MinIO (scripts/minio/build.sh): the real S3 of the scoped-credential tests, built from the Go
# module proxy on first use (7 CPU-minutes: measured 10 minutes on 2 busy cores; then cached).
started=$SECONDS
WML_MINIO=$(bash scripts/minio/build.sh)
export WML_MINIO
echo "MinIO ready in $((SECONDS - started)) s" >&2
python -m pytest -q -p no:cacheprovider tests "$@"
WML_HOME=$notebook_home python -m pytest -q -p no:cacheprovider --nbval-lax notebooks
