"""Admission: which QUEUED runs may take GPUs now.

A run is admitted while its account's GPUs in use + its GPUs ≤ the account's quota and the
executor has the GPUs and a slot free. FIFO within an account; between accounts, the one
holding the smallest share of its quota goes first. A head run that does not fit blocks its
own account (FIFO), and when the fairest candidate does not fit the executor, admission
waits for capacity rather than letting smaller runs jump ahead of it forever.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Optional

from .executors import Capacity
from .store import RunRow


@dataclass(frozen=True)
class Admission:
    """A run to start, and the GPU ids it gets."""

    run: RunRow
    gpu_ids: tuple[int, ...]


def plan_admissions(queued: list[RunRow], active: list[RunRow], quotas: dict[str, int],
                    capacity: Capacity) -> list[Admission]:
    """Decide which queued runs to start now, given what is running and the capacity."""
    held = Counter()
    busy: set[int] = set()
    for run in active:
        held[run.account] += run.gpus * run.learners
        busy.update(run.gpu_ids)
    free = [g for g in capacity.gpu_ids if g not in busy]
    slots = capacity.slots - len(active)
    queues: dict[str, list[RunRow]] = defaultdict(list)
    for run in sorted(queued, key=lambda r: r.seq):
        queues[run.account].append(run)
    plan = []
    while slots > 0:
        pick = _fairest_head(queues, held, quotas)
        if pick is None:
            break
        need = pick.gpus * pick.learners
        if need > len(free):
            break
        plan.append(Admission(pick, tuple(free[:need])))
        free, slots = free[need:], slots - 1
        held[pick.account] += need
        queues[pick.account].pop(0)
    return plan


def _fairest_head(queues: dict[str, list[RunRow]], held: Counter,
                  quotas: dict[str, int]) -> Optional[RunRow]:
    """The head run of the account with the smallest share of its quota in use, if any fits."""
    heads = [q[0] for account, q in queues.items()
             if q and held[account] + q[0].gpus * q[0].learners <= quotas.get(account, 0)]
    if not heads:
        return None
    return min(heads, key=lambda r: (held[r.account] / max(quotas.get(r.account, 1), 1), r.seq))
