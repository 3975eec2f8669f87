"""Threads started ahead, while a runner waits for its run, for the jobs a run gives threads of
their own: starting a thread waits until the new thread is scheduled (a millisecond or more on a
busy host), which a run's start should not."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

#: How many: one fetches the code (unless the executor asked for it at the launch) or stores it
#: with the results while the command runs, one sends the reports, one ships the log and the metrics.
SPARE_THREADS = 3
#: The spare threads, each waiting for the one job it will run.
_spares: list[queue.SimpleQueue] = []


def start_spares(count: int = SPARE_THREADS) -> None:
    """Start ``count`` spare threads (``in_thread`` hands each one job)."""
    for _ in range(count):
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_spare, args=(jobs,), name="wml-spare", daemon=True).start()
        _spares.append(jobs)


def _spare(jobs: queue.SimpleQueue) -> None:
    target, name = jobs.get()
    threading.current_thread().name = name
    target()


def in_thread(target: Callable[[], Any], name: str) -> None:
    """Run ``target`` in a thread of its own named ``name``: a spare one while there are any."""
    try:
        _spares.pop().put((target, name))
    except IndexError:
        threading.Thread(target=target, name=name, daemon=True).start()


def in_background(call: Callable[[], Any], name: str) -> Future:
    """``call()`` in a thread of its own (``in_thread``); its result, or what it raised, in the future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - raised where the result is asked for
            future.set_exception(exc)
    in_thread(run, name)
    return future
