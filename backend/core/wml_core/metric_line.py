"""The metric-line format: how ``run.log()`` hands points to the runner.

One JSON object a line, ``{"time": <unix seconds>, "step": <number or null>, "values": {name: number}}``,
appended to the file named by ``WML_METRICS_FILE``. ``wml_jupyter.run`` writes it, the runner
reads it; both take it from here. Standard library only: training code imports it.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

#: The environment variable that names the file a run's points go to.
METRICS_FILE_ENV = "WML_METRICS_FILE"


def numeric_values(values: dict[str, Any]) -> dict[str, float]:
    """``values`` that are numbers, as floats (a value that is not a number is not a metric)."""
    out = {}
    for key, value in values.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def format_lines(points: Iterable[tuple[float, Optional[float], dict[str, Any]]]) -> str:
    """Lines for ``(time, step, values)`` points, each ending in a newline."""
    return "".join(json.dumps({"time": t, "step": s, "values": numeric_values(v)}) + "\n" for t, s, v in points)


def parse_line(line: bytes | str) -> Optional[tuple[float, Optional[float], dict[str, float]]]:
    """One line as ``(time, step, values)``; None for a malformed line."""
    try:
        raw = json.loads(line)
        values = {k: float(v) for k, v in raw["values"].items()}
        step = raw.get("step")
        return float(raw["time"]), (float(step) if step is not None else None), values
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
