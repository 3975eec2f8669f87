"""The backend's configuration: one frozen object, built from flags and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from wml_core.objectstore import StoreConfig
from wml_core.objectstore.resolve import parse_storage_url, store_config_for, wml_home

#: Port of the embedded backend when none is configured.
DEFAULT_PORT = 8642
#: Bucket of the default store that takes results of definitions that name none.
DEFAULT_RESULTS_BUCKET = "wml-results"
#: Largest code zip a client may submit.
MAX_CODE_BYTES = 64 * 1024 * 1024
#: Most runs an account may have waiting, unless the operator or the account says otherwise:
#: ten of the largest searches, far more than a person queues, far less than fills a database.
DEFAULT_MAX_QUEUED = 10_000
#: Seconds a started run may wait to be placed (an image pulled, a node found) before it fails.
DEFAULT_PENDING_TIMEOUT_S = 1800
#: Seconds a run's scoped credential of the default store lasts (STS allows 900 to 43200 on AWS).
DEFAULT_STORE_CREDENTIAL_S = 3600
#: ``WML_STORE_CREDENTIALS`` that hands runs the operator's keys of the default store.
OPERATOR_STORE_KEYS = "operator"
#: The variable naming the host folders manifests may use as data stores, colon-separated.
HOST_PATHS_ENV = "WML_HOST_PATHS"


def host_paths_from(value: Optional[str]) -> tuple[str, ...]:
    """The folders of a ``WML_HOST_PATHS`` value (``/data:/scratch/shared``), resolved; none for none."""
    return tuple(os.path.realpath(p) for p in (value or "").split(":") if p.strip())


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
    #: Let accounts be made although runs cannot be kept apart from each other here (the local
    #: executor not run by root): all accounts trust each other.
    trusted_accounts: bool = False
    #: Where the run store lives: a ``postgresql://`` URL, or None for SQLite under ``home``.
    database_url: Optional[str] = field(default_factory=lambda: os.environ.get("WML_DATABASE") or None)
    #: What an account may hold at once when it has no limit of its own (None: only the
    #: executor's capacity and the account's GPU quota bound it).
    account_slots: Optional[int] = None
    account_cpus: Optional[float] = None
    account_memory_bytes: Optional[int] = None
    #: Most runs an account may have queued when it has no limit of its own (None: no limit).
    account_max_queued: Optional[int] = DEFAULT_MAX_QUEUED
    #: Seconds a started run may stay PENDING (not placed) before it fails; 0: no limit.
    pending_timeout_s: int = DEFAULT_PENDING_TIMEOUT_S
    #: The key file that encrypts the credentials kept in the run store (None: beside the SQLite
    #: file, or under ``home`` for PostgreSQL; replicas of a shared install must share it).
    secrets_key_path: Optional[str] = field(default_factory=lambda: os.environ.get("WML_SECRETS_KEY_FILE") or None)
    #: How the log is written: ``text`` lines, or ``json`` (one object a line, with run and experiment ids).
    log_format: str = "text"
    #: Host folders (and what lies below them) that a manifest's data store may name as its path
    #: (``mount_volume``, ``host_mount``, a ``file`` store): the operator's allow-list,
    #: ``WML_HOST_PATHS``. Empty: a manifest may name no host path.
    host_paths: tuple[str, ...] = field(default_factory=lambda: host_paths_from(os.environ.get(HOST_PATHS_ENV)))
    #: How runs reach the default S3 store (``scoped_credentials``): ``scoped``, a short-lived
    #: credential per run from the store's STS; ``operator``, the operator's own keys (a store
    #: without STS; every run's code can then reach all of the store). ``WML_STORE_CREDENTIALS``.
    store_credentials: str = field(default_factory=lambda: os.environ.get("WML_STORE_CREDENTIALS") or "scoped")
    #: The role runs' sessions assume (AWS; MinIO and moto ignore it). ``WML_STORE_ROLE_ARN``.
    store_role_arn: str = field(default_factory=lambda: os.environ.get("WML_STORE_ROLE_ARN")
                                or "arn:aws:iam::000000000000:role/wml-runs")
    #: Seconds each scoped credential lasts; runners fetch a new one before. ``WML_STORE_CREDENTIAL_SECONDS``.
    store_credential_s: int = field(default_factory=lambda: int(os.environ.get("WML_STORE_CREDENTIAL_SECONDS")
                                                                or DEFAULT_STORE_CREDENTIAL_S))

    def __post_init__(self) -> None:
        from wml_core.errors import InvalidInput
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            # not a SQLite file of its own: a template's placeholder must not become one silently
            raise InvalidInput("database: --database (or WML_DATABASE) must be a postgresql:// URL; "
                               "leave it unset for SQLite under $WML_HOME")

    @property
    def operator_store_keys(self) -> bool:
        """Whether runs on the default S3 store are handed the operator's own keys (only when the
        operator says ``operator``: any other value means scoped credentials)."""
        return self.store_credentials == OPERATOR_STORE_KEYS

    @property
    def database(self) -> str:
        """The run store's location: the PostgreSQL URL, or the SQLite file."""
        return self.database_url or str(self.home / "backend" / "wml.db")

    @property
    def secrets_key_file(self) -> Path:
        """The file holding the key of the credentials kept in the run store (0600)."""
        return Path(self.secrets_key_path) if self.secrets_key_path else self.home / "backend" / "secrets.key"

    @property
    def work_dir(self) -> Path:
        """Where local runs keep their directories."""
        return self.home / "backend" / "runs"

    @property
    def store_config(self) -> StoreConfig:
        """The default object store: S3 when configured, else the embedded file store."""
        return store_config_for(self.storage_url, self.endpoint, self.home)

    @property
    def default_results(self) -> tuple[str, str]:
        """(bucket, prefix) of results of definitions that name none."""
        return parse_storage_url(self.storage_url) if self.storage_url else (DEFAULT_RESULTS_BUCKET, "")

    @property
    def url(self) -> str:
        """Where runners and clients reach this backend (all replicas of a shared install: the
        address in front of them)."""
        return self.public_url or self.listen_url

    @property
    def listen_url(self) -> str:
        """Where this process itself answers."""
        scheme = "https" if self.tls_cert else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{scheme}://{host}:{self.port}"

    def check_exposure(self) -> None:
        """Refuse to serve plain HTTP beyond loopback unless told ``insecure``: tokens would travel in clear."""
        from wml_core.errors import InvalidInput
        if self.tls_cert and not self.tls_key:
            raise InvalidInput("tls: --tls-cert needs --tls-key")
        loopback = self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")
        if not loopback and not self.tls_cert and not self.insecure:
            raise InvalidInput(f"host: serving on {self.host} needs TLS (--tls-cert/--tls-key) "
                               "or an explicit --insecure")
