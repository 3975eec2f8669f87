"""Sweep overhead: 100 runs of a fixed 0.2 s command on 4 slots, through the backend vs a
plain ``concurrent.futures`` process pool, in the same run. Prints ratios, not a test.

    python bench/sweep_overhead.py [--runs 100] [--slots 4] [--seconds 0.2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_right
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from backend_process import BackendProcess  # noqa: E402

TERMINAL = {"COMPLETED", "FAILED", "HALTED", "STOPPED"}


def baseline(command: str, runs: int, slots: int) -> float:
    """Makespan of the same commands through a process pool."""
    started = time.monotonic()
    with ProcessPoolExecutor(slots) as pool:
        list(pool.map(subprocess.run, [["bash", "-c", command]] * runs))
    return time.monotonic() - started


def write_definition(folder: Path, command: str, runs: int) -> Path:
    """A definition of ``runs`` one-GPU runs of ``command``."""
    manifest = {"name": "overhead", "gpus": 1, "framework": {"name": "custom", "command": command},
                "hyperparameters": {"i": {"int": [1, 1_000_000]}},
                "search": {"algorithm": "random", "runs": runs, "seed": 1}}
    (folder / "manifest.yml").write_text(yaml.safe_dump(manifest))
    return folder / "manifest.yml"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def dispatch_gaps(runs: list, slots: int) -> list[float]:
    """For each run admitted after the first wave: its PENDING time − the last run end before it."""
    def stamp(t):
        return datetime.fromisoformat(t.time.isoformat()).timestamp()
    ends = sorted(stamp(t) for r in runs for t in r.transitions if t.state.value in TERMINAL)
    pendings = sorted(stamp(t) for r in runs for t in r.transitions if t.state.value == "PENDING")
    gaps = []
    for pending in pendings[slots:]:
        i = bisect_right(ends, pending)
        if i:
            gaps.append(pending - ends[i - 1])
    return gaps


def time_in_states(runs: list) -> dict[str, float]:
    """Median seconds a run spends in each active state: where the overhead goes."""
    spent: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for entered, left in zip(run.transitions, run.transitions[1:]):
            spent[entered.state.value].append(left.time.timestamp() - entered.time.timestamp())
    return {state: statistics.median(seconds) for state, seconds in spent.items() if state != "QUEUED"}


def through_backend(command: str, runs: int, slots: int) -> tuple[float, float, list[float], dict[str, float]]:
    """Makespan, accept time, dispatch gaps and time in states of the same commands through the backend."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(Path(tmp) / "home", gpus=slots, slots=slots).start()
        try:
            client = backend.client()
            manifest = write_definition(Path(tmp), command, runs)
            started = time.monotonic()
            experiment = client.train(manifest, Path(tmp))
            accepted = time.monotonic() - started
            experiment.wait()
            finished = time.monotonic()
            all_runs = [r.model for r in experiment.runs()]
            assert all(r.state.value == "COMPLETED" for r in all_runs), "some runs did not complete"
            first = min(t.time.timestamp() for r in all_runs for t in r.transitions)
            last = max(t.time.timestamp() for r in all_runs for t in r.transitions)
            makespan = last - first
            del finished
            return makespan, accepted, dispatch_gaps(all_runs, slots), time_in_states(all_runs)
        finally:
            backend.close()


def main() -> None:
    """Run both and print the ratios against the goals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.2)
    args = parser.parse_args()
    command = f"sleep {args.seconds}"
    base = baseline(command, args.runs, args.slots)
    ours, accepted, gaps, states = through_backend(command, args.runs, args.slots)
    print(f"{args.runs} runs of '{command}' on {args.slots} slots")
    print(f"  process pool makespan      {base:7.2f} s")
    print(f"  backend makespan           {ours:7.2f} s")
    print(f"  makespan ratio             {ours / base:7.3f}  (goal <= 1.05)")
    print(f"  dispatch gap p50           {1000 * statistics.median(gaps):7.1f} ms (goal <= 20 ms)")
    print(f"  dispatch gap p99           {1000 * percentile(gaps, 99):7.1f} ms (goal <= 100 ms)")
    print(f"  accept {args.runs}-run experiment {1000 * accepted:7.1f} ms")
    print("  median time in each state  " + ", ".join(f"{state} {1000 * s:.0f} ms" for state, s in states.items()))


if __name__ == "__main__":
    main()
