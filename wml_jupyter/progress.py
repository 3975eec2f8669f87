"""Progress of an upload or download: an ipywidgets bar in a notebook, tqdm elsewhere.

Both follow ``wml_backend.storage.sync.SyncProgress`` (``start``, ``advance``, ``file_done``,
``close``); the sync calls them one at a time, from its worker threads.
"""

from __future__ import annotations

import time

from wml_backend.storage.sync import SyncProgress, tqdm_progress

#: Shortest time between two updates of the label (the bar moves with every call).
LABEL_EVERY_S = 0.1


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class WidgetProgress(SyncProgress):
    """A progress bar with bytes, files, files skipped as unchanged and the rate."""

    def __init__(self, desc: str = "sync"):
        import ipywidgets as widgets
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description=desc)
        self.label = widgets.HTML()
        self.widget = widgets.HBox([self.bar, self.label])
        self.total_files = self.total_bytes = self.bytes = self.files = self.skipped = 0
        self._started = self._shown = 0.0

    def start(self, total_files: int, total_bytes: int) -> None:
        """Show the bar for ``total_files`` files of ``total_bytes`` bytes."""
        from IPython.display import display
        self.total_files, self.total_bytes = total_files, total_bytes
        self.bar.max = max(total_bytes, 1)
        self._started = time.monotonic()
        self._update(force=True)
        display(self.widget)

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more were sent or found unchanged."""
        self.bytes += nbytes
        self._update()

    def file_done(self, skipped: bool) -> None:
        """One more file is done."""
        self.files += 1
        self.skipped += skipped
        self._update()

    def close(self) -> None:
        """Show the final figures; the bar turns green when every file is done, red otherwise."""
        self._update(force=True)
        self.bar.bar_style = "success" if self.files == self.total_files else "danger"

    def text(self) -> str:
        """The label: bytes, files, unchanged files and the rate."""
        seconds = max(time.monotonic() - self._started, 1e-6)
        return (f"{_size(self.bytes)} / {_size(self.total_bytes)} · {self.files}/{self.total_files} files"
                f" · {self.skipped} unchanged · {_size(self.bytes / seconds)}/s")

    def _update(self, force: bool = False) -> None:
        self.bar.value = float(self.bytes) if self.total_bytes else float(self.files >= self.total_files)
        now = time.monotonic()
        if force or now - self._shown >= LABEL_EVERY_S:
            self._shown = now
            self.label.value = self.text()


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (where widgets can show)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress(desc: str = "sync") -> SyncProgress:
    """A widget bar in a notebook, tqdm bars elsewhere."""
    return WidgetProgress(desc) if in_kernel() else tqdm_progress(desc)


class Transfer:
    """What an upload or download did; shows as its one-line summary."""

    def __init__(self, summary, verb: str, where: str):
        self.summary, self.verb, self.where = summary, verb, where

    def __getattr__(self, name: str):
        return getattr(self.__dict__["summary"], name)

    def __repr__(self) -> str:
        return f"{self.where}: {self.summary.line(self.verb)}"
