"""How a sync reports progress: the ``SyncProgress`` interface and tqdm bars drawing it."""

from __future__ import annotations

import threading
import time


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

    def skip(self, nbytes: int, files: int = 1) -> None:
        """``files`` files of ``nbytes`` bytes in all were found unchanged: their bytes are done,
        none moved."""
        self.advance(nbytes)
        for _ in range(files):
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

    def skip(self, nbytes: int, files: int = 1) -> None:
        with self._lock:
            self._inner.skip(nbytes, files)

    def close(self) -> None:
        with self._lock:
            self._inner.close()


class _TqdmProgress(SyncProgress):
    """Two tqdm bars: bytes, and files (with the number skipped as unchanged), drawn once the sync
    has run ``delay`` seconds (tqdm is imported only then: a sync done sooner draws nothing)."""

    def __init__(self, desc: str, delay: float, options: dict):
        self._desc, self._delay, self._options = desc, delay, options
        self._bars = None
        self._totals = (0, 0)
        self._bytes = self._files = self._skipped = 0
        self._started = 0.0

    def start(self, total_files: int, total_bytes: int) -> None:
        self._totals, self._started = (total_files, total_bytes), time.monotonic()
        self._moved(0, 0, 0)

    def advance(self, nbytes: int) -> None:
        self._moved(nbytes, 0, 0)

    def file_done(self, skipped: bool) -> None:
        self._moved(0, 1, int(skipped))

    def skip(self, nbytes: int, files: int = 1) -> None:
        self._moved(nbytes, files, files)

    def close(self) -> None:
        for bar in self._bars or ():
            bar.close()

    def _moved(self, nbytes: int, files: int, skipped: int) -> None:
        self._bytes, self._files, self._skipped = self._bytes + nbytes, self._files + files, self._skipped + skipped
        if self._bars is None:
            if time.monotonic() - self._started >= self._delay:
                self._bars = self._draw()
            return
        bytes_bar, files_bar = self._bars
        if nbytes:
            bytes_bar.update(nbytes)
        if files:
            files_bar.set_postfix(skipped=self._skipped, refresh=False)
            files_bar.update(files)

    def _draw(self) -> tuple:
        from tqdm import tqdm
        total_files, total_bytes = self._totals
        bytes_bar = tqdm(total=total_bytes, initial=self._bytes, desc=self._desc, unit="B", unit_scale=True,
                         unit_divisor=1000, position=0, **self._options)  # SI, as the summary
        files_bar = tqdm(total=total_files, initial=self._files, desc="files", unit="file", position=1,
                         postfix={"skipped": self._skipped}, **self._options)
        return bytes_bar, files_bar


def tqdm_progress(desc: str = "sync", delay: float = 0.0, **options) -> SyncProgress:
    """A ``SyncProgress`` drawn as tqdm bars once the sync has run ``delay`` seconds (``options``
    go to ``tqdm``, e.g. ``disable``)."""
    return _TqdmProgress(desc, delay, options)
