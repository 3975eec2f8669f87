#!/usr/bin/env bash
# Builds the MinIO server the tests start (tests/minioserver.py) once from the Go module proxy,
# cached under ~/.cache keyed by version (pinned in go.mod beside this file). Prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.sh"
binary="$WML_MINIO_CACHE/minio"
if [ -x "$binary" ]; then echo "$binary"; exit 0; fi
mkdir -p "$WML_MINIO_CACHE"
started=$SECONDS
echo "minio build: github.com/minio/minio@$MINIO_VERSION ..." >&2
(cd "$here" && GOFLAGS="-trimpath -buildvcs=false -mod=readonly" \
  go build -ldflags "-s -w" -o "$binary.partial" github.com/minio/minio)
mv "$binary.partial" "$binary"
echo "minio build: done in $((SECONDS - started)) s" >&2
echo "$binary"
