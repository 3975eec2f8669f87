"""Helpers for code running *inside* a training run: ``hparams()`` and ``log()``.

Imported by training scripts, so it imports nothing heavy. ``log`` only appends to a list;
a background thread writes the points to the file the runner ships (every 0.1 s and at exit).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections import deque
from typing import Any, Optional

from wml_core.metric_line import METRICS_FILE_ENV, format_lines

#: How often buffered points are written for the runner to ship.
FLUSH_INTERVAL_S = 0.1

_buffer: deque = deque()  # append and popleft are thread-safe
_lock = threading.Lock()
_flusher: Optional[threading.Thread] = None


def hparams() -> dict[str, Any]:
    """This run's hyperparameters (empty outside a run)."""
    return json.loads(os.environ.get("WML_HPARAMS") or "{}")


def log(step: Optional[float] = None, **values: float) -> None:
    """Record metric values (e.g. ``log(step=epoch, loss=0.3, val_acc=0.91)``); never blocks."""
    _buffer.append((time.time(), step, values))
    if _flusher is None:
        _start_flusher()


def _start_flusher() -> None:
    global _flusher
    with _lock:
        if _flusher is None:
            _flusher = threading.Thread(target=_flush_forever, name="wml-metrics", daemon=True)
            _flusher.start()
            atexit.register(flush)


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_INTERVAL_S)
        flush()


def flush() -> None:
    """Write buffered points now (outside a run, they are printed as JSON lines)."""
    with _lock:
        points = [_buffer.popleft() for _ in range(len(_buffer))]
        if not points:
            return
        lines = format_lines(points)
        path = os.environ.get(METRICS_FILE_ENV)
        if path:
            with open(path, "a") as f:
                f.write(lines)
        else:
            print(lines, end="")
