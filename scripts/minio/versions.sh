# The pinned MinIO (a commit's pseudo-version: MinIO tags no semver releases; keep go.mod in step).
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
WML_MINIO_CACHE=${WML_MINIO_CACHE:-$HOME/.cache/wml-minio/$MINIO_VERSION}
