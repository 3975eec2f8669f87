"""How a sync reports progress: the ``SyncProgress`` interface and tqdm bars drawing it."""

from __future__ import annotations

import threading


def format_bytes(n: float) -> str:
    """A size for people, in SI units as every bar and summary counts them: ``512 B``, ``150.0 KB``,
    ``1.4 MB``, ``2.1 GB``."""
    for unit in ("B", "KB", "MB"):
        if n < 999.95:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class SyncProgress:
    """Receives a sync's progress; the base class ignores it. Calls never overlap."""

    def start(self, total_files: int, total_bytes: int) -> None:
        """The sync considers ``total_files`` files of ``total_bytes`` bytes in all."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes were sent, or found unchanged and skipped."""

    def file_done(self, skipped: bool) -> None:
        """One more file was transferred, or skipped as unchanged."""

    def skip(self, nbytes: int) -> None:
        """A file of ``nbytes`` was found unchanged: its bytes are done, none moved."""
        self.advance(nbytes)
        self.file_done(True)

    def close(self) -> None:
        """The sync ended (successfully or not)."""


class SerializedProgress(SyncProgress):
    """Forwards to another ``SyncProgress`` one call at a time (workers are threads)."""

    def __init__(self, inner: SyncProgress):
        self._inner, self._lock = inner, threading.Lock()

    def start(self, total_files: int, total_bytes: int) -> None:
        with self._lock:
            self._inner.start(total_files, total_bytes)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._inner.advance(nbytes)

    def file_done(self, skipped: bool) -> None:
        with self._lock:
            self._inner.file_done(skipped)

    def skip(self, nbytes: int) -> None:
        with self._lock:
            self._inner.skip(nbytes)

    def close(self) -> None:
        with self._lock:
            self._inner.close()


class _TqdmProgress(SyncProgress):
    """Two tqdm bars: bytes, and files (with the number skipped as unchanged)."""

    def __init__(self, desc: str, options: dict):
        self._desc, self._options = desc, options
        self._bytes = self._files = None
        self._skipped = 0

    def start(self, total_files: int, total_bytes: int) -> None:
        from tqdm import tqdm
        self._bytes = tqdm(total=total_bytes, desc=self._desc, unit="B", unit_scale=True,
                           unit_divisor=1000, position=0, **self._options)  # SI, as the summary
        self._files = tqdm(total=total_files, desc="files", unit="file", position=1,
                           **self._options)

    def advance(self, nbytes: int) -> None:
        self._bytes.update(nbytes)

    def file_done(self, skipped: bool) -> None:
        self._skipped += skipped
        self._files.set_postfix(skipped=self._skipped, refresh=False)
        self._files.update(1)

    def close(self) -> None:
        for bar in (self._files, self._bytes):
            if bar is not None:
                bar.close()


def tqdm_progress(desc: str = "sync", **options) -> SyncProgress:
    """A ``SyncProgress`` drawn as tqdm bars (``options`` go to ``tqdm``, e.g. ``disable``)."""
    return _TqdmProgress(desc, options)
