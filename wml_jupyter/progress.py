"""Progress of an upload or download: an ipywidgets bar in a notebook, tqdm elsewhere.

Both follow ``wml_core.objectstore.sync.SyncProgress`` (``start``, ``advance``, ``file_done``,
``close``); the sync calls them one at a time, from its worker threads.
"""

from __future__ import annotations

import html
import time

from wml_core.objectstore import SyncSummary
from wml_core.objectstore.progress import format_bytes
from wml_core.objectstore.sync import SyncProgress, tqdm_progress

#: Shortest time between two updates of the label (the bar moves with every call).
LABEL_EVERY_S = 0.1
#: What a transfer does to the files it moves, by the bar's description.
VERBS = {"upload": "sent", "download": "received"}


class WidgetProgress(SyncProgress):
    """A progress bar with bytes, files, files skipped as unchanged and the rate; when the sync
    ends, its label is the summary line the transfer returns (``SyncSummary.line``)."""

    def __init__(self, desc: str = "sync"):
        import ipywidgets as widgets
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description=desc)
        self.label = widgets.HTML()
        self.widget = widgets.HBox([self.bar, self.label])
        self.verb = VERBS.get(desc, "sent")
        self.total_files = self.total_bytes = self.bytes = self.files = self.skipped = self.skipped_bytes = 0
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

    def skip(self, nbytes: int, files: int = 1) -> None:
        """``files`` files of ``nbytes`` bytes in all are unchanged: done, nothing moved."""
        self.skipped_bytes += nbytes
        self.bytes += nbytes
        self.files += files
        self.skipped += files
        self._update()

    def close(self) -> None:
        """Show the summary line; the bar turns green when every file is done, red otherwise."""
        self._update(force=True)
        self.label.value = html.escape(self.summary().line(self.verb))
        self.bar.bar_style = "success" if self.files == self.total_files else "danger"

    def summary(self) -> SyncSummary:
        """What the transfer did so far, as the sync's own summary counts it."""
        return SyncSummary(sent=self.files - self.skipped, skipped=self.skipped,
                           bytes=self.bytes - self.skipped_bytes, skipped_bytes=self.skipped_bytes,
                           seconds=time.monotonic() - self._started)

    def text(self) -> str:
        """The label while it runs: bytes done (moved or unchanged) of all, files, and the rate of
        the bytes moved."""
        seconds = max(time.monotonic() - self._started, 1e-6)
        moved = self.bytes - self.skipped_bytes
        return (f"{format_bytes(self.bytes)} / {format_bytes(self.total_bytes)} · "
                f"{self.files}/{self.total_files} files ({self.skipped} unchanged) · "
                f"{format_bytes(moved / seconds)}/s {self.verb}")

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
