"""The backend's configuration: one frozen object, built from flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .storage import StoreConfig

#: Port of the embedded backend when none is configured.
DEFAULT_PORT = 8642
#: Bucket of the default store that takes results of definitions that name none.
DEFAULT_RESULTS_BUCKET = "wml-results"
#: Largest code zip a client may submit.
MAX_CODE_BYTES = 64 * 1024 * 1024


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix); ``InvalidInput`` for anything else."""
    from .errors import InvalidInput
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise InvalidInput(f"storage: {url!r} is not an s3://bucket[/prefix] URL")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def wml_home() -> Path:
    """``$WML_HOME`` or ``~/.wml``: configuration and the embedded backend's state."""
    return Path(os.environ.get("WML_HOME") or Path.home() / ".wml")


@dataclass(frozen=True)
class Settings:
    """Everything the backend process is configured with."""

    home: Path = field(default_factory=wml_home)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    executor: str = "local"
    #: Local executor: GPUs to schedule (None: detect; on a machine without GPUs, virtual slots).
    gpus: Optional[int] = None
    #: Local executor: most runs at once (None: max(GPUs, CPU cores)).
    slots: Optional[int] = None
    #: The default object store: ``s3://bucket/prefix`` (results of definitions that name no
    #: results bucket go there), or None for the embedded file store under ``home``.
    storage_url: Optional[str] = field(default_factory=lambda: os.environ.get("WML_STORAGE") or None)
    #: S3 endpoint of the default store (None: boto3's own, e.g. AWS_ENDPOINT_URL or AWS).
    endpoint: Optional[str] = field(default_factory=lambda: os.environ.get("AWS_ENDPOINT_URL") or None)
    #: URL runners use to reach the backend (defaults to http://host:port).
    public_url: Optional[str] = field(default_factory=lambda: os.environ.get("WML_PUBLIC_URL") or None)
    #: TLS certificate and key files (PEM) to serve HTTPS with.
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    #: Allow plain HTTP on an address other than loopback (behind a trusted proxy or network).
    insecure: bool = False
    #: Where the run store lives: a ``postgresql://`` URL, or None for SQLite under ``home``.
    database_url: Optional[str] = field(default_factory=lambda: os.environ.get("WML_DATABASE") or None)

    @property
    def database(self) -> str:
        """The run store's location: the PostgreSQL URL, or the SQLite file."""
        return self.database_url or str(self.home / "backend" / "wml.db")

    @property
    def work_dir(self) -> Path:
        """Where local runs keep their directories."""
        return self.home / "backend" / "runs"

    @property
    def store_config(self) -> StoreConfig:
        """The default object store: S3 when configured, else the embedded file store."""
        if self.storage_url:
            parse_storage_url(self.storage_url)
            return StoreConfig(kind="s3", endpoint=self.endpoint)
        return StoreConfig(kind="file", root=str(self.home / "storage"))

    @property
    def default_results(self) -> tuple[str, str]:
        """(bucket, prefix) of results of definitions that name none."""
        return parse_storage_url(self.storage_url) if self.storage_url else (DEFAULT_RESULTS_BUCKET, "")

    @property
    def url(self) -> str:
        """Where runners and clients reach this backend."""
        scheme = "https" if self.tls_cert else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return self.public_url or f"{scheme}://{host}:{self.port}"

    def check_exposure(self) -> None:
        """Refuse to serve plain HTTP beyond loopback unless told ``insecure``: tokens would travel in clear."""
        from .errors import InvalidInput
        if self.tls_cert and not self.tls_key:
            raise InvalidInput("tls: --tls-cert needs --tls-key")
        loopback = self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")
        if not loopback and not self.tls_cert and not self.insecure:
            raise InvalidInput(f"host: serving on {self.host} needs TLS (--tls-cert/--tls-key) "
                               "or an explicit --insecure")
