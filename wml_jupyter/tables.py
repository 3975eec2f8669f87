"""Plain-text tables for the terminal."""

from __future__ import annotations

from typing import Iterable, Sequence

from wml_backend import models

from .objects import RUN_COLUMNS, run_row


def table(rows: Iterable[Sequence[str]], header: Sequence[str]) -> str:
    """Columns padded to their widest cell, under a header."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in rows)])


def runs(items: list[models.Run]) -> str:
    """A table of runs: state (with queue position), hyperparameters, metrics, GPU time."""
    return table(([run_row(r)[c] for c in RUN_COLUMNS] for r in items), RUN_COLUMNS)


def experiments(items: list[models.Experiment]) -> str:
    """A table of experiments, newest first."""
    rows = [(e.id, e.name, e.state, _counts(e.runs), _best(e), f"{e.gpu_seconds:.1f}") for e in items]
    return table(rows, ["id", "name", "state", "runs", "best", "gpu_seconds"])


def experiment(exp: models.Experiment, items: list[models.Run]) -> str:
    """An experiment's summary and, when given, its runs."""
    head = (f"experiment {exp.id} ({exp.name}): {exp.state}; runs {_counts(exp.runs)}; best {_best(exp)}; "
            f"GPU time {exp.gpu_seconds:.1f} s")
    return head + ("\n" + runs(items) if items else "")


def run_detail(run: models.Run) -> str:
    """Everything about one run, including its transitions and the end of a failed log."""
    lines = [f"run {run.id} of experiment {run.experiment_id}: {run.state.value}",
             f"hparams: {run.hparams}", f"metrics: {run.metrics}", f"gpus: {run.gpus} x {run.learners} learner(s), "
             f"GPU time {run.gpu_seconds:.1f} s", f"results: {run.results}"]
    if run.queue_position:
        lines.append(f"queue position: {run.queue_position}")
    if run.exit_code is not None or run.reason:
        lines.append(f"exit code: {run.exit_code}; reason: {run.reason}")
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
    head = (f"account {u.account}: {u.gpus_in_use}/{u.gpu_quota} GPU(s) in use, {u.queued_gpus} queued; "
            f"GPU time {u.gpu_seconds:.1f} s ({u.gpu_seconds / 3600:.3f} GPU-hours)")
    return head + "\n" + table(((e.id, e.name, f"{e.gpu_seconds:.1f}") for e in u.experiments),
                               ["experiment", "name", "gpu_seconds"])


def backend_status(info: dict) -> str:
    """One line about the embedded backend."""
    if not info.get("running"):
        return "backend: not running"
    count = info.get("gpus")
    gpus = f"{count} GPU(s)" if info.get("real_gpus") else f"{count} GPU slot(s) (no GPU detected)"
    return f"backend: running at {info['url']} (pid {info['pid']}, executor {info['executor']}, {gpus})"


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k.lower()}:{v}" for k, v in sorted(counts.items()))


def _best(e: models.Experiment) -> str:
    return f"{e.best.run_id} {e.best.metric}={e.best.value:.4g}" if e.best else "-"
