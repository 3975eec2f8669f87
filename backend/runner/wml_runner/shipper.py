"""Ship a run's log and metrics to the backend while it trains, from files on disk.

Training never waits for the backend: the command writes to files, and this thread reads
them and sends what is new. Resent data is ignored by the backend (offsets and sequence
numbers), so nothing is lost or doubled when the backend restarts.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Optional

from ..models import MetricPoint
from .reporter import Reporter
from .tensorboard import EventFileTail

log = logging.getLogger("wml_runner")

#: How often new log bytes and metric points are sent.
SHIP_INTERVAL_S = 0.1
#: Most log bytes in one request.
LOG_CHUNK_BYTES = 256 * 1024
#: Most metric points in one request.
METRICS_BATCH = 5000
#: Sequence numbers each attempt of a run may use (2**32: far more points than a run logs).
ATTEMPT_SEQ_SPAN = 2 ** 32
#: Sequence numbers each learner of an attempt may use.
LEARNER_SEQ_SPAN = 2 ** 24


class Shipper:
    """A thread sending new lines of a log file and a metrics file every ``SHIP_INTERVAL_S``."""

    def __init__(self, reporter: Reporter, log_path: Path, metrics_path: Path, learner: int = 1,
                 tensorboard_dir: Optional[Path] = None, attempt: int = 1):
        self.reporter, self.log_path, self.metrics_path, self.learner = reporter, log_path, metrics_path, learner
        self._tensorboard = EventFileTail(tensorboard_dir) if tensorboard_dir else None
        self._log_pos = 0          # bytes of the local file already sent
        self._remote_offset = 0    # length of the log on the backend
        self._metrics_pos = 0
        # each attempt, and each learner in it, numbers its points apart
        self._seq = (attempt - 1) * ATTEMPT_SEQ_SPAN + (learner - 1) * LEARNER_SEQ_SPAN
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wml-shipper", daemon=True)

    def start(self) -> "Shipper":
        """Start shipping in the background, after what earlier attempts left in the log."""
        self._remote_offset = self.reporter.log(self.learner, 0, "")
        self._thread.start()
        return self

    def finish(self) -> None:
        """Stop the thread and send everything still unsent."""
        self._stop.set()
        self._thread.join()
        self.ship()

    def _loop(self) -> None:
        while not self._stop.wait(SHIP_INTERVAL_S):
            try:
                self.ship()
            except Exception as exc:  # keep training; the next round sends it
                log.warning("shipping failed: %s", exc)

    def ship(self) -> None:
        """Send what is new in the log and the metrics file (TensorBoard scalars joined to it)."""
        self._ship_log()
        if self._tensorboard:
            self._append_tensorboard_scalars()
        self._ship_metrics()

    def _append_tensorboard_scalars(self) -> None:
        lines = "".join(json.dumps({"time": t, "step": step, "values": values}) + "\n"
                        for t, step, values in self._tensorboard.new_scalars())
        if lines:
            with open(self.metrics_path, "a") as f:
                f.write(lines)

    def _ship_log(self) -> None:
        while True:
            chunk = _read_complete(self.log_path, self._log_pos, LOG_CHUNK_BYTES)
            if not chunk:
                return
            self._remote_offset = self.reporter.log(self.learner, self._remote_offset,
                                                    chunk.decode("utf-8", "replace"))
            self._log_pos += len(chunk)

    def _ship_metrics(self) -> None:
        chunk = _read_complete(self.metrics_path, self._metrics_pos, 1 << 30, whole_lines=True)
        if not chunk:
            return
        points = []
        for line in chunk.splitlines():
            point = _parse_point(line, self._seq)
            if point is not None:
                points.append(point)
                self._seq += 1
        for start in range(0, len(points), METRICS_BATCH):
            self.reporter.metrics(points[start:start + METRICS_BATCH])
        self._metrics_pos += len(chunk)


def _read_complete(path: Path, pos: int, limit: int, whole_lines: bool = False) -> bytes:
    """New bytes of ``path`` from ``pos``, cut at the last newline (or UTF-8 boundary)."""
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read(limit)
    except FileNotFoundError:
        return b""
    if whole_lines or len(data) == limit:
        cut = data.rfind(b"\n") + 1
        return data[:cut] if cut or whole_lines else data
    return data


def _parse_point(line: bytes, seq: int) -> MetricPoint | None:
    """One line of ``run.log`` output as a point; malformed lines are skipped."""
    try:
        raw = json.loads(line)
        values = {k: float(v) for k, v in raw["values"].items()}
        return MetricPoint(seq=seq, time=float(raw["time"]), step=raw.get("step"), values=values)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
