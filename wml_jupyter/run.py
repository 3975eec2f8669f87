"""Helpers for code running *inside* a training run: ``hparams()`` and ``log()``.

Imported by training scripts, so it imports nothing heavy. ``log`` appends to a list, which is
written to the file the runner ships at most every 0.1 s (by the call itself when the last write is
that old, else by a background thread, and at exit). When the runner asks the run to stop (search
early stopping, a cancel), the next ``log`` call writes what is buffered and ends the process.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from collections import deque
from typing import Any, Optional

from wml_core.metric_line import METRICS_FILE_ENV, STOP_EXIT_CODE, STOP_FILE_ENV, format_lines

#: How often buffered points are written for the runner to ship.
FLUSH_INTERVAL_S = 0.1
#: How often ``log`` looks whether the run was asked to stop (a ``stat``; a step is rarely shorter).
STOP_CHECK_S = 0.01

_buffer: deque = deque()  # append and popleft are thread-safe
_lock = threading.Lock()
_flusher: Optional[threading.Thread] = None
_last = {"flush": 0.0, "stop_check": 0.0}
#: The total number of steps last declared, written once with the point that declares it.
_total: dict[str, Optional[float]] = {"declared": None}


def hparams() -> dict[str, Any]:
    """This run's hyperparameters (empty outside a run)."""
    return json.loads(os.environ.get("WML_HPARAMS") or "{}")


def log(step: Optional[float] = None, total_steps: Optional[float] = None, **values: float) -> None:
    """Record metric values (e.g. ``log(step=epoch, total_steps=epochs, loss=0.3, val_acc=0.91)``);
    never blocks. ``total_steps``: how many steps the run will take, shown as its progress
    (``step / total``); a metric may still be named ``total``.
    Ends the process at once (exit code 143, its points written) when the run was asked to stop."""
    now = time.time()
    declared = total_steps if total_steps is not None and total_steps != _total["declared"] else None
    if declared is not None:
        _total["declared"] = declared
    _buffer.append((now, step, values, declared))
    if _flusher is None:
        _start_flusher()
    if now - _last["flush"] >= FLUSH_INTERVAL_S:
        flush()  # a step at a time: the point reaches the runner now, not a flush interval later
    if now - _last["stop_check"] >= STOP_CHECK_S:
        _last["stop_check"] = now
        if _stop_asked():
            _stop()


def _stop_asked() -> bool:
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and os.path.exists(path)


def _stop() -> None:
    """End the run cleanly: its points written; SystemExit in the main thread (``finally`` blocks run)."""
    flush()
    if threading.current_thread() is threading.main_thread():
        sys.exit(STOP_EXIT_CODE)
    os._exit(STOP_EXIT_CODE)


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
        _last["flush"] = time.time()
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
