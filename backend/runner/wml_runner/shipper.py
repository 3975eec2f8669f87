"""Ship a run's log and metrics to the backend while it trains, from files on disk.

Training never waits for the backend: the command writes to files, and this thread reads
them and sends what is new. Resent data is ignored by the backend (offsets and sequence
numbers), so nothing is lost or doubled when the backend restarts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Iterator, Optional

from wml_core.metric_line import format_lines, parse_line
from wml_core.models import MetricPoint
from wml_runner.isolation import open_run_file, read_run_file
from wml_runner.reporter import Reporter
from wml_runner.spare_threads import in_thread
from wml_runner.tensorboard import EventFileTail

log = logging.getLogger("wml_runner")

#: How often new log bytes and metric points are sent.
SHIP_INTERVAL_S = 0.1
#: Most log bytes in one request.
LOG_CHUNK_BYTES = 256 * 1024
#: Most metric points in one request.
METRICS_BATCH = 5000
#: Most bytes of metric points in one request, about (the backend refuses a body over 8 MiB).
METRICS_BATCH_BYTES = 4 << 20
#: Sequence numbers each attempt of a run may use (2**32: far more points than a run logs).
ATTEMPT_SEQ_SPAN = 2 ** 32
#: Sequence numbers each learner of an attempt may use.
LEARNER_SEQ_SPAN = 2 ** 24


class Shipper:
    """A thread sending new lines of a log file and a metrics file every ``SHIP_INTERVAL_S``.

    ``root``: the run's folder, when the command runs as another user: its files are read (and
    TensorBoard's scalars appended) following no link below it (``open_run_file``)."""

    def __init__(self, reporter: Reporter, log_path: Path, metrics_path: Path, learner: int = 1,
                 tensorboard_dir: Optional[Path] = None, attempt: int = 1, root: Optional[Path] = None):
        self.reporter, self.log_path, self.metrics_path, self.learner = reporter, log_path, metrics_path, learner
        self.root = root
        self._tensorboard = EventFileTail(tensorboard_dir, root) if tensorboard_dir else None
        self._log_pos = 0          # bytes of the local file already sent
        self._remote_offset: Optional[int] = None  # length of the log on the backend (None: not asked yet)
        self._metrics_pos = 0
        # each attempt, and each learner in it, numbers its points apart
        self._seq = (attempt - 1) * ATTEMPT_SEQ_SPAN + (learner - 1) * LEARNER_SEQ_SPAN
        self._stop = threading.Event()
        #: Held by a round of shipping: the thread's, or ``finish``'s last one.
        self._shipping = threading.Lock()

    def start(self) -> "Shipper":
        """Start shipping in the background (a spare thread: the command does not wait for a
        thread to start), after what earlier attempts left in the log (asked before the first
        text is sent)."""
        in_thread(self._loop, "wml-shipper")
        return self

    def finish(self) -> None:
        """Stop shipping in the background and send everything still unsent (after the thread's
        round, if one is under way: the thread ships no more once this has begun)."""
        self._stop.set()
        with self._shipping:
            self.ship()

    def _loop(self) -> None:
        while not self._stop.wait(SHIP_INTERVAL_S):
            with self._shipping:
                if self._stop.is_set():
                    return
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
        lines = format_lines(self._tensorboard.new_scalars())
        if lines:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            with os.fdopen(open_run_file(self.metrics_path, self.root, flags), "a") as f:
                f.write(lines)

    def _ship_log(self) -> None:
        while True:
            chunk = _read_complete(self.log_path, self._log_pos, LOG_CHUNK_BYTES, root=self.root)
            if not chunk:
                return
            if self._remote_offset is None:
                self._remote_offset = self.reporter.log(self.learner, 0, "")
            self._remote_offset = self.reporter.log(self.learner, self._remote_offset,
                                                    chunk.decode("utf-8", "replace"))
            self._log_pos += len(chunk)

    def _ship_metrics(self) -> None:
        chunk = _read_complete(self.metrics_path, self._metrics_pos, 1 << 30, whole_lines=True, root=self.root)
        if not chunk:
            return
        points = []
        for line in chunk.splitlines():
            point = _parse_point(line, self._seq)
            if point is not None:
                points.append(point)
                self._seq += 1
        for batch in _batches(points):
            self.reporter.metrics(batch)
        self._metrics_pos += len(chunk)


def _batches(points: list[MetricPoint]) -> Iterator[list[MetricPoint]]:
    """``points`` in order, in requests of at most METRICS_BATCH points and about METRICS_BATCH_BYTES."""
    batch: list[MetricPoint] = []
    size = 0
    for point in points:
        cost = 80 + sum(len(json.dumps(name)) + 26 for name in point.values)  # as JSON, at most
        if batch and (len(batch) >= METRICS_BATCH or size + cost > METRICS_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(point)
        size += cost
    if batch:
        yield batch


def _read_complete(path: Path, pos: int, limit: int, whole_lines: bool = False,
                   root: Optional[Path] = None) -> bytes:
    """New bytes of ``path`` from ``pos``, cut at the last newline (or UTF-8 boundary)."""
    try:
        data = read_run_file(path, root, pos, limit)
    except FileNotFoundError:
        return b""
    if whole_lines or len(data) == limit:
        cut = data.rfind(b"\n") + 1
        return data[:cut] if cut or whole_lines else data
    return data


def _parse_point(line: bytes, seq: int) -> MetricPoint | None:
    """One line of ``run.log`` output as a point; malformed lines are skipped."""
    parsed = parse_line(line)
    if parsed is None:
        return None
    time, step, values = parsed
    return MetricPoint(seq=seq, time=time, step=step, values=values)
