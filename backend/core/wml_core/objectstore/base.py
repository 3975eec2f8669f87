"""The object-store contract every backend (file, S3) implements.

A *bucket* holds *objects* named by ``/``-separated keys. Implementations must make a
``put_file`` atomic: a reader sees the old object, the new one, or nothing, never half.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

#: Called with the number of bytes just transferred (for progress bars).
Progress = Optional[Callable[[int], None]]


@dataclass(frozen=True)
class StoreConfig:
    """Where objects live: ``kind`` is ``file`` (a folder per bucket under ``root``) or ``s3``."""

    kind: str = "file"
    root: str = ""
    endpoint: Optional[str] = None
    region: Optional[str] = None
    access_key: Optional[str] = field(default=None, repr=False)
    secret_key: Optional[str] = field(default=None, repr=False)

    def public(self) -> dict:
        """This configuration without its credentials, safe to show or log."""
        return {"kind": self.kind, "root": self.root, "endpoint": self.endpoint,
                "region": self.region}

    def describe(self) -> str:
        """A short human name for error messages: the endpoint or the folder."""
        return self.endpoint or self.root or "default endpoint"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key (relative to the listed prefix's bucket), size and checksum."""

    key: str
    size: int
    etag: str = ""


@dataclass
class SyncSummary:
    """What an upload or download did, for the one-line summary users see."""

    sent: int = 0
    skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def line(self, verb: str = "sent") -> str:
        """One line: files sent and skipped, bytes, throughput."""
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (f"{self.sent} files {verb}, {self.skipped} unchanged skipped, "
                f"{self.bytes / 1e6:.1f} MB in {self.seconds:.2f} s ({rate:.1f} MB/s)")


class ObjectStore(ABC):
    """A bucket/key store. Errors are ``StorageError`` naming the bucket and the endpoint."""

    config: StoreConfig

    @abstractmethod
    def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists and can be read with these credentials."""

    @abstractmethod
    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist."""

    @abstractmethod
    def check_bucket(self, bucket: str) -> None:
        """Raise ``StorageError`` (missing, denied, unreachable) unless ``bucket`` is usable."""

    @abstractmethod
    def put_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        """Store the local file ``path`` as ``key``, atomically."""

    @abstractmethod
    def get_file(self, bucket: str, key: str, path: Path, progress: Progress = None) -> None:
        """Write object ``key`` to the local ``path`` (streamed; bounded memory)."""

    @abstractmethod
    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, with its size and checksum."""

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """Store ``data`` as ``key``."""
        import tempfile
        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(data)
            tmp.flush()
            self.put_file(bucket, key, Path(tmp.name))

    def local_path(self, bucket: str, prefix: str = "") -> Optional[Path]:
        """A local directory that *is* this prefix (no copy needed), or None."""
        return None
