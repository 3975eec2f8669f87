"""Kubernetes executor at scale, on the test cluster: Jobs per second, API writes per run, watch
lag, and nothing left after the TTL.

    python bench/k8s_submit.py [--quick] [--runs 1000] [--ddp-runs 100] [--nodes 100]

Uses the test cluster running in ``$WML_KUBE_STATE`` (``eval "$(bash scripts/kube-up.sh)"``), or
starts one for the run (tests/k8s/testcluster.py: it needs the test cluster's node agent and
audit log). Adds a node agent of ``--nodes`` pretend GPU
nodes (8 GPUs each: they run no process, a pod there is Running at once and Succeeded after
``--run-s``), makes a namespace from backend/deploy and runs the executor in this process as its
ServiceAccount, exactly as the deployed backend would. Runs go to the pretend nodes through the
executor's own node selector (``gpu_type: pretend`` on the node label
``nodeagent.wml.dev/mode``). ``--quick``: 100 one-learner runs and 10 two-learner runs.

Measured, from the API server's audit log (tests/k8s/testcluster.py) and this process:
* Jobs submitted per second (``Executor.start``: the Job, its Secret, its Service);
* API writes per run by the executor, per object name (goal: 3 for one learner, 4 for more);
  its reads in all (no per-run GET: status comes from watches);
* watch lag: from the node's write of a pod's status (audit log, microseconds) that ended its
  run, to the executor's ``on_exit`` for that run (goal: p99 <= 1 s), and as a ratio to the Job
  controller's own lag from that write to the Job's end (the baseline: a run of one learner ends
  from its pod's terminal status, without waiting for its Job's);
* every Job and Secret gone once the Jobs' TTL (``WML_K8S_JOB_TTL_S``) has passed.
Prints a table of the figures and their goals; exits 1 if a goal is missed. Not a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "k8s"))

from testcluster import (  # noqa: E402
    WRITE_VERBS,
    BackendNamespace,
    Cluster,
    backend_namespace,
    shared_cluster,
    start_nodes,
    stop_nodes,
)

GPUS_PER_NODE = 8
#: The executor's settings: pods to the pretend nodes, a short TTL, quiet notes.
EXECUTOR_ENV = {"WML_K8S_GPU_LABEL": "nodeagent.wml.dev/mode", "WML_K8S_PENDING_NOTE_S": "600"}
#: Seconds to wait for every run's end: the runs that have not ended by then count as not completed.
END_TIMEOUT_S = 900


def say(text: str) -> None:
    print(f"k8s_submit: {text}", file=sys.stderr, flush=True)


def launches(count: int, learners: int, tag: str):
    """``count`` one-GPU-per-learner runs of one experiment, as the lifecycle would start them."""
    from wml_backend.executors.base import Launch
    return [Launch(run_id=f"{tag}-{i:04d}", experiment_id=tag, account="alice", attempt=1, gpus=1, gpu_ids=(0,),
                   learners=learners, cpus=1, memory_bytes=1 << 30, framework="pytorch", gpu_type="pretend",
                   env={"WML_RUN_ID": f"{tag}-{i:04d}", "WML_RUNNER_TOKEN": "t" * 32})
            for i in range(count)]


class Ends:
    """When each run's ``on_exit`` came (wall clock, as the audit log's), and with what."""

    def __init__(self, expected: int):
        self.at: dict[str, tuple[float, Optional[int], Optional[str]]] = {}
        self.expected, self.all = expected, threading.Event()

    def __call__(self, run_id, attempt, code, reason=None, **details) -> None:
        self.at[run_id] = (time.time(), code, reason)
        if len(self.at) >= self.expected:
            self.all.set()


class JobsFinished:
    """When an administrator's watch of the namespace's Jobs first saw each one finished: the
    Job controller's part of the lag, apart from the executor's."""

    def __init__(self, cluster: Cluster, ns: BackendNamespace):
        from kubernetes import client, watch
        self.at: dict[str, float] = {}
        self._watch, self._list = watch.Watch(), client.BatchV1Api(cluster.api()).list_namespaced_job
        threading.Thread(target=self._follow, args=(ns.name,), daemon=True).start()

    def _follow(self, namespace: str) -> None:
        with suppress(Exception):  # a stopped watch ends badly
            for event in self._watch.stream(self._list, namespace, timeout_seconds=3600, deserialize=False):
                job = event["object"]  # JSON only: no model objects, so as to take little of this process
                conditions = (job.get("status") or {}).get("conditions") or []
                if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions):
                    self.at.setdefault(job["metadata"]["name"], time.time())

    def stop(self) -> None:
        self._watch.stop()


def measure(cluster: Cluster, ns: BackendNamespace, runs: int, ddp_runs: int, ttl_s: int) -> dict:
    """Start every run, wait for every end and for the TTL; the figures."""
    os.environ.update(EXECUTOR_ENV, KUBECONFIG=str(ns.kubeconfig), WML_K8S_JOB_TTL_S=str(ttl_s))
    from wml_backend.executors.kubernetes import KubernetesExecutor
    from wml_backend.settings import Settings
    executor = KubernetesExecutor.from_settings(Settings(gpus=10**6, slots=10**6, storage_url="s3://bench"))
    batch = launches(runs, 1, "one") + launches(ddp_runs, 2, "two")
    ends, finished = Ends(len(batch)), JobsFinished(cluster, ns)
    executor.on_exit = ends
    started = time.perf_counter()
    jobs = {launch.run_id: executor.start(launch)["job"] for launch in batch}
    submit_s = time.perf_counter() - started
    say(f"{len(jobs)} runs started in {submit_s:.1f} s; waiting for them to end")
    ends.all.wait(END_TIMEOUT_S)
    ended_s = time.perf_counter() - started
    say(f"{len(ends.at)} runs ended after {ended_s:.1f} s; waiting {ttl_s} s for the TTL")
    executor.close()
    finished.stop()
    left = wait_for_ttl(ns, ttl_s)
    return {"runs": runs, "ddp_runs": ddp_runs, "submit_s": submit_s, "ended_s": ended_s, "jobs": jobs,
            "ends": ends.at, "finished": finished.at, "left": left, "calls": ns.calls(),
            "pod_writes": pod_status_writes(cluster, ns)}


def wait_for_ttl(ns: BackendNamespace, ttl_s: int) -> dict[str, int]:
    """Jobs, Secrets and pods still in the namespace once the TTL (and 60 s more, at most) passed."""
    time.sleep(ttl_s)
    deadline = time.monotonic() + 60
    while True:
        left = {kind: len(ns.objects(kind)) for kind in ("jobs", "secrets", "pods")}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(2)


def pod_status_writes(cluster: Cluster, ns: BackendNamespace) -> dict[str, list[float]]:
    """When the nodes wrote each pod's status, by pod name (from the audit log)."""
    import json
    mark = f'"namespace":"{ns.name}"'
    writes: dict[str, list[float]] = defaultdict(list)
    for line in cluster.audit_log.read_text().splitlines():
        if '"pods"' in line and '"status"' in line and mark in line and '"system:nodes"' in line:
            event = json.loads(line)
            if event.get("stage") == "ResponseComplete" and event["objectRef"].get("subresource") == "status":
                writes[event["objectRef"]["name"]].append(_stamp(event["stageTimestamp"]))
    return writes


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def writes_per_run(result: dict) -> dict[str, list[int]]:
    """The executor's API writes per run (by the objects' name, the run's Job name), by kind of run."""
    by_name = Counter(c["objectRef"].get("name") for c in result["calls"] if c["verb"] in WRITE_VERBS)
    return {kind: [by_name[job] for run_id, job in result["jobs"].items() if run_id.startswith(kind)]
            for kind in ("one", "two")}


def watch_lags(result: dict) -> dict[str, list[float]]:
    """Per run, sorted: ``run`` its end (``on_exit``) minus the last write of its pods' status
    before it; ``job`` the Job seen finished minus that write (the Job controller's part);
    ``executor`` its end minus the Job seen finished (the executor's part)."""
    lags: dict[str, list[float]] = {"run": [], "job": [], "executor": []}
    for run_id, job in result["jobs"].items():
        ended, finished = result["ends"].get(run_id), result["finished"].get(job)
        if ended is None:
            continue
        stamps = [t for pod, times in result["pod_writes"].items() if pod.startswith(job + "-")
                  for t in times if t <= ended[0]]
        if stamps:
            lags["run"].append(ended[0] - max(stamps))
        if stamps and finished is not None:
            lags["job"].append(finished - max(stamps))
            lags["executor"].append(ended[0] - finished)
    return {part: sorted(values) for part, values in lags.items()}


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def report(result: dict) -> bool:
    """Print the figures and the goals as a table; True when every goal is met."""
    runs, ddp = result["runs"], result["ddp_runs"]
    writes, lags = writes_per_run(result), watch_lags(result)
    reads = Counter(c["verb"] for c in result["calls"] if c["verb"] not in WRITE_VERBS)
    completed = sum(1 for _, code, _ in result["ends"].values() if code == 0)
    total = runs + ddp
    rows: list[tuple[str, str, str, Optional[bool]]] = [
        ("runs (1 learner + 2 learners)", f"{runs} + {ddp}", "", None),
        ("runs completed", f"{completed}", f"{total}", completed == total),
        ("Jobs submitted per second", f"{total / result['submit_s']:.0f}", "", None),
        ("all runs ended after", f"{result['ended_s']:.1f} s", "", None),
        ("API writes per run, 1 learner (max, mean)", _max_mean(writes["one"]), "<= 3", max(writes["one"]) <= 3),
    ]
    if ddp:
        rows.append(("API writes per run, 2 learners (max, mean)", _max_mean(writes["two"]), "<= 5",
                     max(writes["two"]) <= 5))  # and the Service and the run's NetworkPolicy
    rows += [
        ("API reads: get / list / watch, in all", f"{reads['get']} / {reads['list']} / {reads['watch']}",
         "0 get", reads["get"] == 0),
        ("watch lag p50 / p99 / max: pod status -> run end", _spread(lags["run"]), "p99 <= 1 s",
         bool(lags["run"]) and percentile(lags["run"], .99) <= 1.0),
        ("  of which pod status -> Job finished", _spread(lags["job"]), "", None),
        ("  and Job finished -> run end (executor)", _spread(lags["executor"]), "", None),
        ("watch lag / pod status -> Job finished (p50, p99)", _ratios(lags["run"], lags["job"]), "< 1", None),
        ("Jobs / Secrets / pods left after the TTL",
         f"{result['left']['jobs']} / {result['left']['secrets']} / {result['left']['pods']}", "0",
         not any(result["left"].values())),
    ]
    print(f"{'measure':50} {'value':26} {'goal':12}")
    for name, value, goal, ok in rows:
        print(f"{name:50} {value:26} {goal:12} {'' if ok is None else ('PASS' if ok else 'FAIL')}")
    return all(ok for *_, ok in rows if ok is not None)


def _spread(values: list[float]) -> str:
    """p50 / p99 / max of sorted ``values``, in seconds."""
    top = values[-1] if values else float("nan")
    return f"{percentile(values, .5):.2f} / {percentile(values, .99):.2f} / {top:.2f} s"


def _ratios(values: list[float], baseline: list[float]) -> str:
    """p50 and p99 of sorted ``values`` over those of ``baseline``, measured in the same run: the
    executor's end of a run against the Job controller's own (the run ends from its pod's status,
    not from its Job's, which the Job controller writes later, in batches)."""
    def ratio(q: float) -> str:
        base = percentile(baseline, q)
        return f"{percentile(values, q) / base:.2f}" if values and base > 0 else "-"
    return f"{ratio(.5)}, {ratio(.99)}"


def _max_mean(values: list[int]) -> str:
    return f"{max(values)}, {sum(values) / len(values):.2f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 runs and 10 two-learner runs")
    parser.add_argument("--runs", type=int, default=1000, help="one-learner runs (default 1000)")
    parser.add_argument("--ddp-runs", type=int, default=100, help="two-learner runs (default 100)")
    parser.add_argument("--nodes", type=int, default=100, help=f"pretend nodes of {GPUS_PER_NODE} GPUs (default 100)")
    parser.add_argument("--run-s", type=float, default=5.0, help="how long a pod 'runs' (default 5 s)")
    parser.add_argument("--ttl-s", type=int, default=20, help="WML_K8S_JOB_TTL_S (default 20)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.ddp_runs = 100, 10
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the nodes and namespace go too
    cluster = shared_cluster()  # the running test cluster, or one started until this process exits
    say(f"starting {args.nodes} pretend nodes")
    nodes = start_nodes(cluster, "bench-", args.nodes, options=[
        "--gpus", str(GPUS_PER_NODE), "--pretend-run-s", str(args.run_s)])
    try:
        with tempfile.TemporaryDirectory(prefix="wml-bench-") as home, \
                backend_namespace(cluster, Path(home), "wml-bench") as ns:
            result = measure(cluster, ns, args.runs, args.ddp_runs, args.ttl_s)
    finally:
        stop_nodes(cluster, nodes)
    return 0 if report(result) else 1


if __name__ == "__main__":
    sys.exit(main())
