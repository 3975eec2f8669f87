"""Sweep overhead: the same trials (``sleep 0.2`` and ``sleep 1``) on 4 slots through the backend,
through a plain ``concurrent.futures`` process pool (the baseline) and through Ray Tune (a peer, in
its own environment: see peer_env.py), all in one run. Prints makespans and ratios, and where the
backend's time per run goes (its overhead: all but the command's own time; time in each state)
and the CPU each trial costs through each (on a small machine, what runs compete for); not a test.

``--torch``: each trial is instead ``python3 trial.py SECONDS``, a script that imports torch and
sleeps, of framework ``pytorch``: the pool starts a fresh Python per trial (as a cold run does), the
backend forks each from its warm interpreter (``wml_runner.zygote``).

    python bench/sweep_overhead.py [--runs 100] [--slots 4] [--seconds 0.2 1] [--no-ray] [--quick] [--torch]
"""

from __future__ import annotations

import argparse
import os
import resource
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

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from backend_process import BackendProcess  # noqa: E402
from peer_env import PeerUnavailable, run_peer  # noqa: E402
from wml_core.states import TERMINAL as TERMINAL_STATES, RunState  # noqa: E402

TERMINAL = {state.value for state in TERMINAL_STATES}


#: Seconds between two looks at whether the backend's experiment has ended (each look is a
#: request the backend serves while it runs the trials).
WAIT_POLL_S = 2.0
#: The trial of ``--torch``: what a PyTorch run does first, then its "training" (a sleep).
TORCH_TRIAL = "import sys, time\nimport torch\ntime.sleep(float(sys.argv[1]))\n"


def trial_code(folder: Path) -> Path:
    """A code folder holding ``trial.py`` (``TORCH_TRIAL``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trial.py").write_text(TORCH_TRIAL)
    return folder


def baseline(command: str, runs: int, slots: int, cwd: Path) -> tuple[float, float]:
    """Makespan of the same commands through a process pool, and the CPU seconds it used (its
    workers and their commands)."""
    cpu, started = _reaped_cpu_s(), time.monotonic()
    with ProcessPoolExecutor(slots) as pool:
        list(pool.map(_run_in, [command] * runs, [cwd] * runs))
    return time.monotonic() - started, _reaped_cpu_s() - cpu


def _reaped_cpu_s() -> float:
    """CPU seconds of this process's children that have ended (and of theirs)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` and all below it, the ended ones included."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            used = process.cpu_times()
        except psutil.Error:
            continue  # ended meanwhile: counted by its parent, once reaped
        total += used.user + used.system + used.children_user + used.children_system
    return total


def _run_in(command: str, cwd: Path) -> None:
    subprocess.run(["bash", "-c", command], cwd=cwd, check=True)


def write_definition(folder: Path, command: str, runs: int, framework: str = "custom") -> Path:
    """A definition of ``runs`` one-GPU runs of ``command``."""
    manifest = {"name": "overhead", "gpus": 1, "framework": {"name": framework, "command": command},
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
    pendings = sorted(stamp(t) for r in runs for t in r.transitions if t.state is RunState.PENDING)
    gaps = []
    for pending in pendings[slots:]:
        i = bisect_right(ends, pending)
        if i:
            gaps.append(pending - ends[i - 1])
    return gaps


def overheads(runs: list, slots: int, own_s: float) -> list[float]:
    """Each run's overhead: its time from PENDING to its end, and the time its slot stood idle
    before it (as ``dispatch_gaps``; none for the first wave), less ``own_s``, the command's own time."""
    ends = sorted(r.transitions[-1].time.timestamp() for r in runs)
    spans = sorted((_entered(r, RunState.PENDING), r.transitions[-1].time.timestamp()) for r in runs)
    extra = []
    for k, (pending, end) in enumerate(spans):
        before = bisect_right(ends, pending)
        gap = pending - ends[before - 1] if k >= slots and before else 0.0
        extra.append(end - pending + gap - own_s)
    return extra


def _entered(run, state: RunState) -> float:
    """When ``run`` first entered ``state``."""
    return min(t.time.timestamp() for t in run.transitions if t.state is state)


def time_in_states(runs: list) -> dict[str, float]:
    """Median seconds a run spends in each active state: where the overhead goes."""
    spent: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for entered, left in zip(run.transitions, run.transitions[1:]):
            spent[entered.state.value].append(left.time.timestamp() - entered.time.timestamp())
    return {state: statistics.median(seconds) for state, seconds in spent.items() if state != RunState.QUEUED.value}


def through_backend(command: str, runs: int, slots: int, framework: str = "custom",
                    ) -> tuple[float, float, list, dict[str, float], float]:
    """Makespan, accept time, the runs, time in states of the same commands through the backend,
    and the CPU seconds it used meanwhile (the backend, its runners and their commands)."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(Path(tmp) / "home", gpus=slots, slots=slots).start()
        try:
            client = backend.client()
            code = trial_code(Path(tmp) / "code")
            manifest = write_definition(Path(tmp), command, runs, framework)
            cpu, started = tree_cpu_s(backend.proc.pid), time.monotonic()
            experiment = client.train(manifest, code)
            accepted = time.monotonic() - started
            while not client.experiment(experiment.id).model.state.terminal:
                time.sleep(WAIT_POLL_S)  # seldom: the makespan comes from the runs' own transitions
            cpu = tree_cpu_s(backend.proc.pid) - cpu
            all_runs = [r.model for r in experiment.runs()]
            assert all(r.state is RunState.COMPLETED for r in all_runs), "some runs did not complete"
            first = min(t.time.timestamp() for r in all_runs for t in r.transitions)
            last = max(t.time.timestamp() for r in all_runs for t in r.transitions)
            return last - first, accepted, all_runs, time_in_states(all_runs), cpu
        finally:
            backend.close()


def ray_tune(runs: int, slots: int, durations: list[float]) -> dict:
    """Ray Tune's makespans per duration, or ``{"unavailable": why}``."""
    try:
        return run_peer("ray", Path(__file__).with_name("ray_tune_peer.py"),
                        ["sweep", str(runs), str(slots), *map(str, durations)])
    except PeerUnavailable as exc:
        return {"unavailable": str(exc)}


def measure(durations: list[float], runs: int, slots: int, torch: bool = False) -> tuple[dict, dict, dict]:
    """The pool's makespans, the backend's figures and the pool's CPU seconds per duration,
    printing progress."""
    pool, ours, pool_cpu = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        code = trial_code(Path(tmp))
        for seconds in durations:
            command = f"python3 trial.py {seconds}" if torch else f"sleep {seconds}"
            pool[seconds], pool_cpu[seconds] = baseline(command, runs, slots, code)
            print(f"  process pool, {runs} x {command}: {pool[seconds]:.2f} s", flush=True)
            ours[seconds] = through_backend(command, runs, slots, "pytorch" if torch else "custom")
            print(f"  backend,      {runs} x {command}: {ours[seconds][0]:.2f} s", flush=True)
    return pool, ours, pool_cpu


def report(durations: list[float], runs: int, slots: int, pool: dict, ours: dict, ray: dict, pool_cpu: dict) -> None:
    """One table of makespans and ratios to the pool, then where the backend's overhead goes."""
    print(f"\n{runs} trials on {slots} slots: makespan (ratio to the process pool)")
    print(f"  {'':30}" + "".join(f"{f'{d} s trials':>22}" for d in durations))
    rows = [("process pool (baseline)", {d: pool[d] for d in durations}),
            ("wml backend", {d: ours[d][0] for d in durations})]
    if "unavailable" not in ray:
        rows += [(f"Ray Tune {ray['version']} (Tuner.fit)", {d: ray[str(d)]["makespan"] for d in durations}),
                 ("Ray Tune, trials only", {d: ray[str(d)]["trials_span"] for d in durations})]
    for name, spans in rows:
        print(f"  {name:30}" + "".join(f"{spans[d]:10.2f} s ({spans[d] / pool[d]:6.3f}x)" for d in durations))
    if "unavailable" in ray:
        print(f"  Ray Tune: not measured ({ray['unavailable']})")
    else:
        print(f"  (Ray: reuse_actors=True; its start, {ray['ray_start']:.1f} s, and a warm-up fit of {slots} "
              f"trials, {ray['warm_up']:.1f} s, are not counted; 'trials only' = first trial's start to "
              "last trial's end)")
    print("  goals: backend <= 1.10x for 0.2 s trials, <= 1.03x for 1 s trials and below Ray Tune's")
    print("  goal: per-run overhead (all but the command's own time) median <= 15 ms")
    for d in durations:
        _, accepted, all_runs, states, cpu = ours[d]
        gaps = dispatch_gaps(all_runs, slots)
        extra = overheads(all_runs, slots, pool[d] * slots / runs)
        print(f"  {d} s trials: per-run overhead median {1000 * statistics.median(extra):.1f} ms, p90 "
              f"{1000 * percentile(extra, 90):.1f} ms (PENDING to end + the slot's idle gap before it - the pool's "
              f"time per trial); dispatch gap p50 {1000 * statistics.median(gaps):.1f} ms, "
              f"p99 {1000 * percentile(gaps, 99):.1f} ms; accept {runs} runs {1000 * accepted:.0f} ms; "
              "median time in state " + ", ".join(f"{s} {1000 * t:.0f} ms" for s, t in states.items()))
        print(f"  {d} s trials: CPU per trial {1000 * cpu / runs:.1f} ms through the backend (its runners and "
              f"commands too) vs {1000 * pool_cpu[d] / runs:.1f} ms through the pool ({cpu / pool_cpu[d]:.1f}x), "
              f"on {os.cpu_count()} cores: what the runs' own CPU competes with")


def main() -> None:
    """Run the pool, the backend and Ray Tune; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seconds", type=float, nargs="+", default=[0.2, 1.0], help="trial durations")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Tune")
    parser.add_argument("--quick", action="store_true", help="20 trials per duration (about 2 minutes)")
    parser.add_argument("--torch", action="store_true", help="trials import torch (warm starts vs a fresh Python)")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    print(f"measuring {runs} trials of {', '.join(f'{d} s' for d in args.seconds)} on {args.slots} slots",
          flush=True)
    pool, ours, pool_cpu = measure(args.seconds, runs, args.slots, args.torch)
    no_ray = "--no-ray" if args.no_ray else "--torch: Ray Tune runs sleeps only" if args.torch else None
    ray = {"unavailable": no_ray} if no_ray else ray_tune(runs, args.slots, args.seconds)
    report(args.seconds, runs, args.slots, pool, ours, ray, pool_cpu)


if __name__ == "__main__":
    main()
