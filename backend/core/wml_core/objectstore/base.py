"""The object-store contract every backend (file, S3) implements.

A *bucket* holds *objects* named by ``/``-separated keys. Implementations must make a
``put_file`` atomic: a reader sees the old object, the new one, or nothing, never half.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from wml_core.errors import StorageError
from wml_core.objectstore.progress import format_bytes

#: A run's store entry with this key set: the runner asks the backend for a credential scoped to
#: the run (and again before it expires) instead of being given keys.
SCOPED_STORE = "scoped"
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
    #: S3 without credentials: requests go unsigned, never signed with credentials found in the
    #: environment (a user-named endpoint must not receive the backend's own keys).
    anonymous: bool = False

    def public(self) -> dict:
        """This configuration without its credentials, safe to show or log."""
        return {"kind": self.kind, "root": self.root, "endpoint": self.endpoint,
                "region": self.region, "anonymous": self.anonymous}

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
    #: Bytes moved; a file found unchanged moves none.
    bytes: int = 0
    #: Bytes of the files found unchanged (a progress bar counts them as done).
    skipped_bytes: int = 0
    seconds: float = 0.0

    def line(self, verb: str = "sent") -> str:
        """One line, as a progress bar ends: files moved and skipped, bytes moved of the whole, and
        the throughput of the bytes moved (sizes in SI units, as the bars count them)."""
        rate = self.bytes / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.sent} files {verb}, {self.skipped} unchanged skipped: {format_bytes(self.bytes)} {verb} "
                f"of {format_bytes(self.bytes + self.skipped_bytes)} in {self.seconds:.2f} s "
                f"({format_bytes(rate)}/s)")

    @classmethod
    def combined(cls, summaries: list["SyncSummary"]) -> "SyncSummary":
        """One summary of several transfers."""
        return cls(**{name: sum(getattr(s, name) for s in summaries) for name in cls.__dataclass_fields__})


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

    @abstractmethod
    def missing(self, bucket: str) -> StorageError:
        """The error ``check_bucket`` raises for a ``bucket`` that does not exist, word for word
        (a bucket that must not be revealed is refused with it)."""

    def holds_objects(self, bucket: str, prefix: str = "") -> bool:
        """Whether any object's key starts with ``prefix`` (False when the bucket is missing)."""
        return self.bucket_exists(bucket) and next(iter(self.list(bucket, prefix)), None) is not None

    def checksums(self, bucket: str, prefix: str, max_objects: int, max_bytes: int) -> tuple[dict[str, str], bool]:
        """ETags of the objects under ``prefix`` by key, of at most ``max_objects`` of them and
        ``max_bytes`` read to compute them; whether that is all of them. By default the listing's
        own ETags (an S3 server keeps them: nothing is read); a store that hashes files bounds its bytes."""
        etags: dict[str, str] = {}
        for info in self.list(bucket, prefix):
            if len(etags) == max_objects:
                return etags, False
            etags[info.key] = info.etag
        return etags, True

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

    @abstractmethod
    def delete_prefix(self, bucket: str, prefix: str) -> None:
        """Remove every object under ``prefix`` (cleanup, tests); nothing if there is none."""

    # -- what sync uses to skip unchanged files and list big prefixes fast --------------------
    #: Whether ``list_range`` reads only its range, so that disjoint ranges of one big prefix
    #: are worth listing in parallel. False: it filters a full ``list``, so sync lists once.
    ranged_listing: bool = False

    def list_range(self, bucket: str, prefix: str = "", after: Optional[str] = None,
                   until: Optional[str] = None, page_size: int = 1000) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` with ``after < key <= until`` (None: no bound), in key order.

        By default ``list`` filtered (``page_size`` unused); a store that can start a listing
        at a key (S3's ``StartAfter``) reads only the range and sets ``ranged_listing``.
        """
        for info in sorted(self.list(bucket, prefix), key=lambda o: o.key):
            if (after is None or info.key > after) and (until is None or info.key <= until):
                yield info

    def part_size(self, size: int) -> int:
        """The multipart part size this store uploads a file of ``size`` bytes with; 0 for a
        single PUT. It says which ETag the store gives a file (digests.file_etag). Default 0."""
        return 0

    def put_file_etag(self, bucket: str, key: str, path: Path, progress: Progress = None) -> Optional[str]:
        """``put_file`` that returns the stored object's ETag when the store learns it while
        sending (so a sent file need not be hashed again); None when it does not (the default)."""
        self.put_file(bucket, key, path, progress)
        return None

    def cache_dir(self) -> Optional[Path]:
        """A folder for this store's client-side caches (the local files' digests); None, the
        default: the user's own cache under ``$WML_HOME``."""
        return None
