"""Admission: which QUEUED runs may start now.

A run is admitted while its account stays within its limits (GPUs, runs at once, CPUs, memory:
``Limits``) and the executor has the GPUs and a slot free. FIFO within an account; between
accounts, the one holding the smallest dominant share goes first: its largest fraction of any
limit it has (runs count against the executor's slots when the account has no slot limit of
its own), so CPU-only runs count too and an account with no GPUs cannot keep one with GPUs
waiting forever. A head run that does not fit blocks its own account (FIFO), and when the
fairest candidate does not fit the executor, admission waits for capacity rather than letting
smaller runs jump ahead of it forever. Accounts with no ``Limits`` (disabled) are not admitted.

A pass reads only the heads of the queues (``plan_from_heads``): the first run of each account's
queue, and more of an account's only when the plan used up those it read, so the runs behind
never change a plan and a pass costs the same with ten queued runs or a hundred thousand.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Optional

from wml_backend.executors import Capacity
from wml_backend.rundb import Account, RunRow
from wml_backend.settings import Settings


@dataclass(frozen=True)
class Limits:
    """What one account's runs may hold at once; None: no limit of the account's own."""

    gpus: Optional[int]
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


#: Reads the first ``wanted[account]`` queued runs of each account (``RunStore.queue_heads``).
HeadReader = Callable[[dict[str, int]], dict[str, list[RunRow]]]


def plan_from_heads(read: HeadReader, active: list[RunRow], limits: dict[str, Limits],
                    capacity: Capacity) -> list[Admission]:
    """``plan_admissions`` over the whole queue, reading only its heads: one run per account, then,
    while the plan uses up every run read of an account that may have more, twice as many of those
    (only those accounts' are read again)."""
    free = max(capacity.slots - len(active), 0)
    running = Counter(run.account for run in active)
    # No plan starts more runs of an account than the free slots, nor than its slot limit leaves.
    most = {account: free if limit.slots is None else min(free, max(limit.slots - running[account], 0))
            for account, limit in limits.items()}
    wanted = {account: min(1, n) for account, n in most.items()}
    heads = read(wanted)
    while True:
        plan = plan_admissions([run for runs in heads.values() for run in runs], active, limits, capacity)
        taken = Counter(a.run.account for a in plan)
        short = {account: min(2 * wanted[account], most[account]) for account, runs in heads.items()
                 if taken[account] == len(runs) == wanted[account] < most[account]}
        if not short:
            return plan
        wanted.update(short)
        heads.update(read(short))


@dataclass(frozen=True)
class Admission:
    """A run to start, and the GPU ids it gets."""

    run: RunRow
    gpu_ids: tuple[int, ...]


def plan_admissions(queued: list[RunRow], active: list[RunRow], limits: dict[str, Limits],
                    capacity: Capacity) -> list[Admission]:
    """Decide which queued runs to start now, given what is running, each account's limits and the
    capacity. An executor whose cluster holds the GPU quotas (``counts_gpus`` False: Kueue) gets
    runs as slots allow, with no GPU ids: they wait in the cluster's queue, not here."""
    if not capacity.counts_gpus:
        limits = {account: replace(limit, gpus=None) for account, limit in limits.items()}
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
    # The fairest head is the heap's least: an admission changes only its own account's entry.
    heap = [e for e in (_entry(a, queues, held, limits, capacity.slots) for a in queues) if e is not None]
    heapq.heapify(heap)
    while slots > 0 and heap:
        account = heapq.heappop(heap)[2]
        pick = queues[account][0]
        need = pick.gpus * pick.learners if capacity.counts_gpus else 0
        if need > len(free):
            break
        plan.append(Admission(pick, tuple(free[:need])))
        free, slots = free[need:], slots - 1
        held[account] = held[account].plus(Held.of(pick))
        queues[account].pop(0)
        entry = _entry(account, queues, held, limits, capacity.slots)
        if entry is not None:
            heapq.heappush(heap, entry)
    return plan


def _entry(account: str, queues: dict[str, list[RunRow]], held: dict[str, Held], limits: dict[str, Limits],
           slots: int) -> Optional[tuple[float, int, str]]:
    """An account's place among the candidates: (its dominant share, its head's seq, the account);
    None when its queue is empty or its head would take it over its limits (it waits: FIFO)."""
    queue = queues[account]
    if not queue or not held[account].plus(Held.of(queue[0])).within(limits[account]):
        return None
    return held[account].share(limits[account], slots), queue[0].seq, account
