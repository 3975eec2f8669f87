"""How the client words runs and experiments: state counts, why a run ended, which run leads.

The live display, the objects' HTML, the terminal tables and compare say these things the same
way, and so does the sidebar: ``labextension/src/format.ts`` mirrors each function here.
"""

from __future__ import annotations

import html
import re
from typing import Any, Collection, Mapping, Optional, Sequence

from wml_core import models
from wml_core.metric_line import TOTAL_STEPS
from wml_core.states import ACTIVE, RunState

#: How run states are counted in a summary, in the order shown (``GROUPS`` in format.ts).
GROUPS: tuple[tuple[str, frozenset[RunState]], ...] = (
    ("running", ACTIVE),
    ("queued", frozenset({RunState.QUEUED})),
    ("completed", frozenset({RunState.COMPLETED})),
    ("failed", frozenset({RunState.FAILED})),
    ("halted", frozenset({RunState.HALTED})),
    ("stopped", frozenset({RunState.STOPPED})),
)
#: Ended states whose reason a user needs (a completed run needs none).
EXPLAINED = frozenset({RunState.FAILED, RunState.HALTED, RunState.STOPPED})
#: Table columns that hold words, never numbers, whatever their cells look like.
TEXT_COLUMNS = ("run", "id", "state", "reason")
#: Right-aligned cells, in figures of one width, for numbers and durations.
NUMERIC_STYLE = "text-align:right;font-variant-numeric:tabular-nums"


def counts_text(counts: Mapping[str, int]) -> str:
    """Runs by state, as ``2 running · 3 completed · 2 failed`` (empty groups left out)."""
    parts = [(label, sum(counts.get(s.value, 0) for s in states)) for label, states in GROUPS]
    return " · ".join(f"{n} {label}" for label, n in parts if n) or "no runs"


def all_failed(counts: Mapping[str, int]) -> bool:
    """Whether there are runs and every one of them failed."""
    total = sum(counts.values())
    return bool(total) and counts.get(RunState.FAILED.value, 0) == total


def last_error_line(lines: Sequence[str]) -> str:
    """The last non-blank line of a log tail: a traceback's last line is the error itself."""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def why(run: models.Run) -> str:
    """Why a run ended (empty while it lives, or when it completed): its reason and, for a
    failed command, the last line of its traceback or error output."""
    if run.state not in EXPLAINED:
        return ""
    reason = run.reason or ""
    error = last_error_line(run.log_tail) if run.state is RunState.FAILED else ""
    if error and error not in reason:
        return f"{error} ({reason})" if reason else error
    return reason


def preempted_text(run: models.Run) -> str:
    """Why a disruption (a node drain, Kueue preemption, ``backend stop --drain``) ended the run's
    last disrupted attempt and where it resumes, in the backend's words (``run.preempted``), with the
    attempt it is on: ``preempted: ...; resumed at step 12 · attempt 2``; empty if never preempted."""
    return f"{run.preempted} · attempt {run.attempt}" if run.preempted else ""


def joined(*parts: str) -> str:
    """The non-empty ``parts`` as one cell: ``a · b``."""
    return " · ".join(part for part in parts if part)


def num(value: Any) -> str:
    """A metric or hyperparameter value: floats with 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_text(best: Optional[models.BestRun], metric: Optional[str]) -> str:
    """``best e-03 acc=0.91``; ``leader e-02 acc=0.8 at step 7 (provisional)`` while no run has
    completed; ``no acc yet``; or ``no metric chosen`` (no metric, no best)."""
    if not metric:
        return "no metric chosen"
    if best is None:
        return f"no {metric} yet"
    value = f"{best.run_id} {best.metric}={num(best.value)}"
    if not best.provisional:
        return f"best {value}"
    step = f" at step {best.step:g}" if best.step is not None else ""
    return f"leader {value}{step} (provisional)"


#: A number, optionally in a unit, or a duration as ``format_gpu_time`` writes it.
_NUMERIC = re.compile(r"^(?:[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|[-+]?inf|nan)(?: s| h| min \d+ s)?$")
#: Cells that say "nothing here" and do not decide a column's kind.
_BLANK = ("", "–", "-")


def numeric_columns(columns: Sequence[str], rows: Sequence[Sequence[str]],
                    text: Collection[str] = ()) -> set[str]:
    """The columns (not in ``text``) whose every non-blank cell is a number or a duration."""
    found = set()
    for i, column in enumerate(columns):
        cells = [str(row[i]) for row in rows if i < len(row) and str(row[i]) not in _BLANK]
        if column not in text and cells and all(_NUMERIC.match(c) for c in cells):
            found.add(column)
    return found


class Html(str):
    """A table cell that is HTML already (not escaped)."""


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], numeric: Collection[str] = (),
               row_styles: Sequence[str] = ()) -> str:
    """An HTML table of text cells (escaped unless ``Html``); ``numeric`` columns right-aligned,
    row ``i`` styled with ``row_styles[i]`` when given."""
    right = [c in numeric for c in columns]
    head = "".join(_cell("th", html.escape(c), r) for c, r in zip(columns, right))
    body = []
    for i, row in enumerate(rows):
        style = f' style="{row_styles[i]}"' if i < len(row_styles) and row_styles[i] else ""
        cells = "".join(_cell("td", c if isinstance(c, Html) else html.escape(str(c)), r)
                        for c, r in zip(row, right))
        body.append(f"<tr{style}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(tag: str, content: str, right: bool) -> str:
    style = f' style="{NUMERIC_STYLE}"' if right else ""
    return f"<{tag}{style}>{content}</{tag}>"


def eta_text(seconds: Optional[float]) -> str:
    """An estimate for people: ``~40 s``, ``~3 min``, ``~1.5 h``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"~{max(5, int(round(seconds / 5.0)) * 5)} s"
    if seconds < 3600:
        return f"~{int(round(seconds / 60.0))} min"
    return f"~{seconds / 3600:.1f} h"


def progress_text(latest: Mapping[str, float]) -> str:
    """A run's progress from its latest metrics: ``3 / 10`` when its code declared a total
    (``run.log(step=3, total_steps=10)``), ``3`` with a step alone, empty with neither."""
    step = latest.get("step")
    if step is None:
        return ""
    total = latest.get(TOTAL_STEPS)
    return f"{step:g} / {total:g}" if total else f"{step:g}"


def waiting_text(run: models.Run) -> str:
    """What a waiting run waits for and when it should start: ``#2 in the queue · waits for a GPU:
    1 of 1 in use · starts in ~3 min`` (empty for a run that does not wait)."""
    if run.state is not RunState.QUEUED and not run.queued_reason:
        return ""
    parts = [f"#{run.queue_position} in the queue"] if run.queue_position else []
    if run.queued_reason:
        parts.append(f"waits for {run.queued_reason}")
    if run.eta_seconds is not None:
        parts.append(f"starts in {eta_text(run.eta_seconds)}")
    return " · ".join(parts)


def quota_text(usage: models.Usage) -> str:
    """The quota as admission counts it: ``GPUs 1 / 2 in use · run slots 2 / 4 · 3 queued (a GPU:
    2 of 2 in use)``; GPUs are "GPU slots" on a machine without GPUs."""
    gpus = "GPUs" if usage.real_gpus else "GPU slots"
    parts = [f"{gpus} {usage.gpus_in_use} / {usage.gpu_quota} in use"]
    if usage.run_slots is not None:
        parts.append(f"run slots {usage.runs_in_use} / {usage.run_slots}")
    queued = f"{usage.queued_runs} queued"
    parts.append(f"{queued} (waiting for {usage.waiting_for})" if usage.waiting_for else queued)
    return " · ".join(parts)
