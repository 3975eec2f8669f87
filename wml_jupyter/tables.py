"""Plain-text tables for the terminal."""

from __future__ import annotations

from typing import Iterable, Sequence

from wml_core import models
from wml_core.billing import format_gpu_time

from .describe import TEXT_COLUMNS, numeric_columns, quota_text
from .objects import EXPERIMENT_COLUMNS, RUN_COLUMNS, experiment_row, experiment_summary, run_fields, run_row


def table(rows: Iterable[Sequence[str]], header: Sequence[str]) -> str:
    """Columns padded to their widest cell, under a header; numbers and durations right-aligned."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    numeric = numeric_columns(header, rows, text=TEXT_COLUMNS)
    fmt = "  ".join(f"{{:{'>' if h in numeric else '<'}{w}}}" for h, w in zip(header, widths))
    return "\n".join(line.rstrip() for line in [fmt.format(*header), *(fmt.format(*r) for r in rows)])


def runs(items: list[models.Run]) -> str:
    """A table of runs: state (with queue position), hyperparameters, metrics, GPU time."""
    return table(([run_row(r)[c] for c in RUN_COLUMNS] for r in items), RUN_COLUMNS)


def experiments(items: list[models.Experiment]) -> str:
    """A table of experiments, newest first: runs counted by state, best run, GPU time."""
    return table(([experiment_row(e)[c] for c in EXPERIMENT_COLUMNS] for e in items), EXPERIMENT_COLUMNS)


def experiment(exp: models.Experiment, items: list[models.Run]) -> str:
    """An experiment's summary and, when given, its runs."""
    head = f"experiment {exp.id} ({exp.name}): {experiment_summary(exp)}"
    return head + ("\n" + runs(items) if items else "")


def run_detail(run: models.Run) -> str:
    """Everything about one run, including its transitions and the end of a failed log."""
    lines = [f"run {run.id}"] + [f"{name}: {text}" for name, text in run_fields(run)]
    lines += [f"  {t.time.isoformat()}  {t.state.value}" for t in run.transitions]
    if run.log_tail:
        lines += ["last log lines:", *("  " + line for line in run.log_tail)]
    return "\n".join(lines)


def metrics(points: list[models.MetricPoint]) -> str:
    """A table of metric points, one row per ``run.log`` call."""
    names = sorted({k for p in points for k in p.values})
    rows = [(p.seq, "" if p.step is None else f"{p.step:g}", *(f"{p.values[n]:.6g}" if n in p.values else ""
                                                             for n in names)) for p in points]
    return table(rows, ["seq", "step", *names])


def usage(u: models.Usage) -> str:
    """The account's quota, GPUs in use and GPU time per experiment."""
    head = f"account {u.account}: {quota_text(u)} · GPU time {format_gpu_time(u.gpu_seconds)}"
    return head + "\n" + table(((e.id, e.name, format_gpu_time(e.gpu_seconds)) for e in u.experiments),
                               ["experiment", "name", "GPU time"])


def backend_status(info: dict) -> str:
    """One line about the embedded backend (after ``stop``, whether it stopped it)."""
    if "stopped" in info and not info.get("running"):
        return "backend stopped" if info["stopped"] else "backend: was not running"
    if not info.get("running"):
        return "backend: not running"
    count = info.get("gpus")
    gpus = f"{count} GPU(s)" if info.get("real_gpus") else f"{count} GPU slot(s) (no GPU detected)"
    line = f"backend: running at {info['url']} (pid {info['pid']}, executor {info['executor']}, {gpus})"
    return "\n".join([line, *_replica_lines(info)])


def _replica_lines(info: dict) -> list[str]:
    """The replicas sharing the backend's database and which one leads, when it is shared."""
    replicas = info.get("replicas") or []
    if len(replicas) < 2 and not str(info.get("database", "")).startswith("postgres"):
        return []  # the embedded backend: one process, its own leader
    lines = [f"replicas of {info.get('database')}: {len(replicas)}"]
    for r in replicas:
        role = "leader" if r["leader"] else "follower"
        here = ", this one" if r["id"] == info.get("replica") else ""
        lines.append(f"  {r['id']} {role} at {r['url']} (host {r['host']}, pid {r['pid']}, "
                     f"version {r['version']}{here})")
    return lines


def account(info: models.AccountInfo) -> str:
    """An account's limits in force, one line, named as ``wml accounts update`` sets them."""
    def limit(value, shown=str) -> str:
        return "no limit" if value is None else shown(value)
    state = " (disabled)" if info.disabled else ""
    return (f"account {info.name}{state}: gpus {info.gpu_quota}, slots {limit(info.slots)}, "
            f"cpus {limit(info.cpus, lambda n: f'{n:g}')}, memory {limit(info.memory_bytes, _size)}, "
            f"max queued {limit(info.max_queued)}")


def _size(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"
