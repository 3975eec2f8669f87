"""GPU time: gpus × (time its outputs were stored − time its GPUs were assigned), per attempt."""

from __future__ import annotations

import time as _time
from typing import Iterable, Optional

from .models import Transition
from .states import RunState


def gpu_seconds(transitions: Iterable[Transition], gpus: int, now: Optional[float] = None) -> float:
    """GPU-seconds a run has used: every span from PENDING to leaving the active states."""
    total, start = 0.0, None
    for t in transitions:
        stamp = t.time.timestamp()
        if t.state is RunState.PENDING and start is None:
            start = stamp
        elif start is not None and not t.state.active:
            total += stamp - start
            start = None
    if start is not None:
        total += (now if now is not None else _time.time()) - start
    return gpus * total
