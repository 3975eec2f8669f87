"""Admission: which QUEUED runs may start now.

A run is admitted while its account stays within its limits (GPUs, runs at once, CPUs, memory:
``Limits``) and the executor has the GPUs and a slot free. FIFO within an account; between
accounts, the one holding the smallest dominant share goes first: its largest fraction of any
limit it has (runs count against the executor's slots when the account has no slot limit of
its own), so CPU-only runs count too and an account with no GPUs cannot keep one with GPUs
waiting forever. A head run that does not fit blocks its own account (FIFO), and when the
fairest candidate does not fit the executor, admission waits for capacity rather than letting
smaller runs jump ahead of it forever. Accounts with no ``Limits`` (disabled) are not admitted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

from wml_backend.executors import Capacity
from wml_backend.rundb import Account, RunRow
from wml_backend.settings import Settings


@dataclass(frozen=True)
class Limits:
    """What one account's runs may hold at once; None: no limit of the account's own."""

    gpus: int
    slots: Optional[int] = None
    cpus: Optional[float] = None
    memory_bytes: Optional[int] = None


def limits_of(account: Account, settings: Settings) -> Limits:
    """What the account's runs may hold at once: its own limits, else the operator's defaults."""
    def own(value, default):
        return default if value is None else value
    return Limits(gpus=account.gpu_quota, slots=own(account.slots, settings.account_slots),
                  cpus=own(account.cpus, settings.account_cpus),
                  memory_bytes=own(account.memory_bytes, settings.account_memory_bytes))


def over_limits(run: RunRow, limits: Limits) -> Optional[str]:
    """Why ``run`` alone asks for more than its account may ever hold; None if it fits."""
    need = Held.of(run)
    for field, shown in _AMOUNTS:
        asked, limit = getattr(need, field), getattr(limits, field)
        if limit is not None and asked > limit:
            return f"each run asks for {shown(asked)} but account {run.account!r} may hold at most {shown(limit)}"
    return None


#: What a run asks for that a limit bounds by itself, and how a message says an amount of it.
_AMOUNTS = (("gpus", lambda n: f"{n:g} GPUs"), ("cpus", lambda n: f"{n:g} CPUs"),
            ("memory_bytes", lambda n: f"{n / 2**30:.3g} GiB of memory"))


@dataclass
class Held:
    """What runs hold (or one run asks for): GPUs, runs, CPUs and memory, learners summed."""

    gpus: int = 0
    runs: int = 0
    cpus: float = 0.0
    memory_bytes: int = 0

    @classmethod
    def of(cls, run: RunRow) -> "Held":
        """What ``run`` holds once started."""
        return cls(run.gpus * run.learners, 1, run.cpus * run.learners, (run.memory_bytes or 0) * run.learners)

    def plus(self, other: "Held") -> "Held":
        """This much and ``other`` together."""
        return Held(self.gpus + other.gpus, self.runs + other.runs, self.cpus + other.cpus,
                    self.memory_bytes + other.memory_bytes)

    def within(self, limits: Limits) -> bool:
        """Whether this much stays within ``limits``."""
        return all(limit is None or used <= limit for used, limit in self._pairs(limits))

    def share(self, limits: Limits, slots: int) -> float:
        """The largest fraction of a limit this much uses (runs against ``slots`` when no slot limit)."""
        pairs = [(used, limit) for used, limit in self._pairs(limits) if limit]
        pairs.append((self.runs, limits.slots or max(slots, 1)))
        return max(used / limit for used, limit in pairs)

    def _pairs(self, limits: Limits) -> list[tuple[float, Optional[float]]]:
        """(used, limit) for each thing an account may be limited in."""
        return [(self.gpus, limits.gpus), (self.runs, limits.slots), (self.cpus, limits.cpus),
                (self.memory_bytes, limits.memory_bytes)]


@dataclass(frozen=True)
class Admission:
    """A run to start, and the GPU ids it gets."""

    run: RunRow
    gpu_ids: tuple[int, ...]


def plan_admissions(queued: list[RunRow], active: list[RunRow], limits: dict[str, Limits],
                    capacity: Capacity) -> list[Admission]:
    """Decide which queued runs to start now, given what is running, each account's limits and the capacity."""
    held: dict[str, Held] = defaultdict(Held)
    busy: set[int] = set()
    for run in active:
        held[run.account] = held[run.account].plus(Held.of(run))
        busy.update(run.gpu_ids)
    free = [g for g in capacity.gpu_ids if g not in busy]
    slots = capacity.slots - len(active)
    queues: dict[str, list[RunRow]] = defaultdict(list)
    for run in sorted(queued, key=lambda r: r.seq):
        if run.account in limits:
            queues[run.account].append(run)
    plan = []
    while slots > 0:
        pick = _fairest_head(queues, held, limits, capacity.slots)
        if pick is None:
            break
        need = pick.gpus * pick.learners
        if need > len(free):
            break
        plan.append(Admission(pick, tuple(free[:need])))
        free, slots = free[need:], slots - 1
        held[pick.account] = held[pick.account].plus(Held.of(pick))
        queues[pick.account].pop(0)
    return plan


def _fairest_head(queues: dict[str, list[RunRow]], held: dict[str, Held], limits: dict[str, Limits],
                  slots: int) -> Optional[RunRow]:
    """The head run of the account with the smallest dominant share, among heads within their limits."""
    heads = [q[0] for account, q in queues.items()
             if q and held[account].plus(Held.of(q[0])).within(limits[account])]
    if not heads:
        return None
    return min(heads, key=lambda r: (held[r.account].share(limits[r.account], slots), r.seq))
