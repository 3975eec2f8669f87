"""The metric-line format: how ``run.log()`` hands points to the runner.

One JSON object a line, ``{"time": <unix seconds>, "step": <number or null>, "values": {name: number}}``
(and ``"total": <number>`` when the code declared how many steps it will take), appended to the file
named by ``WML_METRICS_FILE``. ``wml_jupyter.run`` writes it, the runner reads it; both take it from
here. A declared total travels on as the value ``total_steps``, so that a run's latest metrics hold
``step`` and ``total_steps`` beside its metrics (``PROGRESS_KEYS``: not metrics to chart or rank).

The runner asks a run to stop by creating the file named by ``WML_STOP_FILE``: ``run.log`` checks
for it and ends the process with ``STOP_EXIT_CODE`` at the next step. Standard library only:
training code imports it.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

#: The environment variable that names the file a run's points go to.
METRICS_FILE_ENV = "WML_METRICS_FILE"
#: The environment variable that names the file whose existence asks the run to stop.
STOP_FILE_ENV = "WML_STOP_FILE"
#: How a command that stopped itself when asked (at a step, its points written) exits: 128 + SIGTERM,
#: as if terminated, so that the runner tells it from a command that ended all its steps (0).
STOP_EXIT_CODE = 143
#: The value a declared total number of steps travels as.
TOTAL_STEPS = "total_steps"
#: The keys of a run's latest metrics that say its progress, not a metric.
PROGRESS_KEYS = frozenset({"step", TOTAL_STEPS})

Point = tuple  # (time, step, values) or (time, step, values, total)


def numeric_values(values: dict[str, Any]) -> dict[str, float]:
    """``values`` that are numbers, as floats (a value that is not a number is not a metric)."""
    out = {}
    for key, value in values.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def format_lines(points: Iterable[Point]) -> str:
    """Lines for ``(time, step, values)`` or ``(time, step, values, total)`` points, each ending in a newline."""
    return "".join(_line(*point) + "\n" for point in points)


def _line(time: float, step: Optional[float], values: dict[str, Any], total: Optional[float] = None) -> str:
    line = {"time": time, "step": step, "values": numeric_values(values)}
    if total is not None:
        line["total"] = total
    return json.dumps(line)


def parse_line(line: bytes | str) -> Optional[tuple[float, Optional[float], dict[str, float]]]:
    """One line as ``(time, step, values)`` (a declared total among the values, as ``TOTAL_STEPS``);
    None for a malformed line."""
    try:
        raw = json.loads(line)
        values = {k: float(v) for k, v in raw["values"].items()}
        if raw.get("total") is not None:
            values[TOTAL_STEPS] = float(raw["total"])
        step = raw.get("step")
        return float(raw["time"]), (float(step) if step is not None else None), values
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
