"""Kubernetes executor: Jobs submitted per second, and API calls per run, against the stand-in.

    python bench/k8s_submit.py [--runs 200]

The executor talks to the stand-in API server of ``tests/k8s`` through the official client,
exactly as to a cluster; the stand-in's node only pretends to run containers (no processes)
and schema validation is off, so the numbers are the executor's and the client's, not the
runner's. Goals: at most 3 API writes per run on the happy path (Secret, Job, Secret deleted),
for the one-learner runs measured here (a run of N > 1 learners takes a fourth: its headless
Service, created after the Job and deleted with it by the garbage collector),
and status from watches only: no per-run reads (GET), a constant number of LISTs and WATCHes.
Prints one line per measure, then PASS/FAIL per goal. Not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "k8s"))

from kubefake import start_fake_kube, stop_fake_kube  # noqa: E402

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def launches(count: int):
    """``count`` one-GPU runs of one experiment, as the lifecycle would start them."""
    from wml_backend.executors.base import Launch
    return [Launch(run_id=f"bench-{i:04d}", experiment_id="bench", account="alice", attempt=1, gpus=1,
                   gpu_ids=(0,), learners=1, cpus=1, memory_bytes=1 << 30, framework="pytorch",
                   env={"WML_RUN_ID": f"bench-{i:04d}", "WML_RUNNER_TOKEN": "t" * 32,
                        "WML_BACKEND_URL": "http://wml-backend.wml.svc:8642"}) for i in range(count)]


def measure(runs: int) -> dict:
    """Start ``runs`` runs, wait for every exit; return rates, latencies and call counts."""
    kube = start_fake_kube(Path(tempfile.mkdtemp()) / "kube", gpus=runs, simulate_s=0.0, validate=False)
    os.environ["KUBECONFIG"] = str(kube.kubeconfig)
    from wml_backend.executors.kubernetes import KubernetesExecutor
    from wml_backend.settings import Settings
    executor = KubernetesExecutor.from_settings(Settings(gpus=runs))
    done, ended = threading.Event(), Counter()

    def on_exit(run_id, attempt, code, reason=None, log_tail=None):
        ended[code] += 1
        if sum(ended.values()) == runs:
            done.set()
    executor.on_exit = on_exit  # calls are counted from the executor's start: its first LISTs and WATCHes too
    batch = launches(runs)
    start = time.perf_counter()
    for launch in batch:
        executor.start(launch)
    submitted = time.perf_counter() - start
    done.wait(600)
    finished = time.perf_counter() - start
    calls = Counter(kube.server.store.calls)
    executor.close()
    stop_fake_kube(kube)
    return {"runs": runs, "submit_s": submitted, "all_ended_s": finished, "completed": ended[0], "calls": calls}


def report(result: dict) -> bool:
    """Print the measures and the goals; True when every goal is met."""
    runs, calls = result["runs"], result["calls"]
    writes = sum(n for (verb, _), n in calls.items() if verb in WRITES)
    gets = sum(n for (verb, _), n in calls.items() if verb == "GET")
    lists = sum(n for (verb, _), n in calls.items() if verb == "LIST")
    watches = sum(n for (verb, _), n in calls.items() if verb == "WATCH")
    print(f"runs                      {runs} ({result['completed']} completed)")
    per_run_ms = result["submit_s"] * 1000 / runs
    print(f"Jobs submitted per second {runs / result['submit_s']:.0f}  ({per_run_ms:.1f} ms a run)")
    print(f"all runs ended after      {result['all_ended_s']:.2f} s")
    print(f"API writes per run        {writes / runs:.2f}  " + ", ".join(
        f"{verb} {res}: {n / runs:.2f}" for (verb, res), n in sorted(calls.items()) if verb in WRITES))
    print(f"API reads                 GET per run {gets / runs:.2f}; in all, whatever the runs: "
          f"LIST {lists}, WATCH {watches}")
    goals = {"≤ 3 writes per run": writes / runs <= 3, "no per-run polling (0 GET)": gets == 0,
             "every run completed": result["completed"] == runs}
    for goal, ok in goals.items():
        print(f"{'PASS' if ok else 'FAIL'}  {goal}")
    return all(goals.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs to submit (default 200)")
    args = parser.parse_args()
    return 0 if report(measure(args.runs)) else 1


if __name__ == "__main__":
    sys.exit(main())
