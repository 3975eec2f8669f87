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

The executor's ``on_exit`` goes to a real ``Lifecycle`` over a SQLite run store (in a temporary
``WML_HOME``) that holds every run as running, its runner having reported COMPLETED: as in a
backend, the run ends when the lifecycle has stored its end.

Measured, from the API server's audit log (tests/k8s/testcluster.py) and this process:
* Jobs submitted per second (``Executor.start``: the Job, its Secret, its Service and NetworkPolicy);
* API writes per run by the executor, per object name (goal: 3 for one learner, 4 for more);
  its reads in all (no per-run GET: status comes from watches);
* watch lag, for one and for two learners: from the node's write of a pod's status that ended its
  run (when the API server received it: the audit log's ``requestReceivedTimestamp``, in
  microseconds; its ``ResponseComplete`` stage may come after watchers have seen the change), to
  the run's end stored by the lifecycle (goal: p99 <= 1 s);
  split into the API server's and the watch's part (to the executor's pod watch delivering that
  status) and the executor's and the state write's (from there to the stored end); and as a ratio
  to the Job controller's own lag from that write to the Job's end (the baseline: a run ends from
  its pods' terminal statuses, without waiting for its Job's);
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
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Optional

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

if TYPE_CHECKING:
    from wml_backend.lifecycle import Lifecycle

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
    """When the lifecycle stored each run's end (wall clock, as the audit log's), and in which state."""

    def __init__(self, expected: int):
        self.at: dict[str, tuple[float, str]] = {}
        self.expected, self.all = expected, threading.Event()

    def __call__(self, row) -> None:
        self.at[row.id] = (time.time(), row.state.value)
        if len(self.at) >= self.expected:
            self.all.set()


class Delivered:
    """When the executor's pod watch delivered each pod's terminal status: the API server's and
    the watch's part of the lag (wraps the pod informer's handler: instrumentation, not an API)."""

    def __init__(self, executor):
        self.at: dict[str, float] = {}
        handle = executor.pods._handle

        def seen(kind: str, pod: dict) -> None:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                self.at.setdefault(pod["metadata"]["name"], time.time())
            handle(kind, pod)
        executor.pods._handle = seen


def running_runs(home: Path, executor, batch) -> Lifecycle:
    """A lifecycle over a new SQLite run store holding ``batch`` as running runs whose runners
    reported COMPLETED: the executor's ``on_exit`` ends each, storing its end as a backend does."""
    from wml_backend.eventbus import EventBus
    from wml_backend.lifecycle import Lifecycle
    from wml_backend.rundb import Account, ExperimentRow, RunRow, SqliteRunStore
    from wml_backend.settings import Settings
    from wml_core.states import RunState
    store = SqliteRunStore(Settings(home=home).database)
    store.create_account(Account(name="alice", gpu_quota=10**6), "unused")
    now = datetime.now(timezone.utc)
    for tag in sorted({launch.experiment_id for launch in batch}):
        rows = [RunRow(id=launch.run_id, experiment_id=tag, account="alice", name=launch.run_id, created=now,
                       state=RunState.PROCESSING, attempt=1, gpus=launch.gpus, learners=launch.learners,
                       reported_state=RunState.COMPLETED) for launch in batch if launch.experiment_id == tag]
        experiment = ExperimentRow(id=tag, account="alice", name=tag, created=time.time(),
                                   definition={"name": tag, "framework": "pytorch", "command": "true"})
        store.insert_experiment(experiment, rows, b"PK", None)
    return Lifecycle(Settings(home=home), store, executor, EventBus(store))


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


def measure(cluster: Cluster, ns: BackendNamespace, home: Path, runs: int, ddp_runs: int, ttl_s: int) -> dict:
    """Start every run, wait for every end and for the TTL; the figures."""
    os.environ.update(EXECUTOR_ENV, KUBECONFIG=str(ns.kubeconfig), WML_K8S_JOB_TTL_S=str(ttl_s))
    from wml_backend.executors.kubernetes import KubernetesExecutor
    from wml_backend.settings import Settings
    executor = KubernetesExecutor.from_settings(Settings(gpus=10**6, slots=10**6, storage_url="s3://bench"))
    batch = launches(runs, 1, "one") + launches(ddp_runs, 2, "two")
    ends, finished, delivered = Ends(len(batch)), JobsFinished(cluster, ns), Delivered(executor)
    lifecycle = running_runs(home, executor, batch)
    lifecycle.on_end.append(ends)
    started = time.perf_counter()
    jobs = {launch.run_id: executor.start(launch)["job"] for launch in batch}
    submit_s = time.perf_counter() - started
    say(f"{len(jobs)} runs started in {submit_s:.1f} s; waiting for them to end")
    ends.all.wait(END_TIMEOUT_S)
    ended_s = time.perf_counter() - started
    say(f"{len(ends.at)} runs ended after {ended_s:.1f} s; waiting {ttl_s} s for the TTL")
    executor.close()
    left = wait_for_ttl(ns, ttl_s)
    finished.stop()  # after the TTL: the Job controller ends some Jobs after their runs ended
    lifecycle.store.close()
    return {"runs": runs, "ddp_runs": ddp_runs, "submit_s": submit_s, "ended_s": ended_s, "jobs": jobs,
            "ends": ends.at, "finished": finished.at, "delivered": delivered.at, "left": left,
            "calls": ns.calls(), "pod_writes": pod_status_writes(cluster, ns)}


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
    """When the API server received the nodes' writes of each pod's status, by pod name (from the
    audit log: no watcher can see a write before it was received)."""
    mark = f'"namespace":"{ns.name}"'
    writes: dict[str, list[float]] = defaultdict(list)
    for event in cluster.audit_events('"pods"', '"status"', mark, '"system:nodes"'):
        if event.get("stage") == "ResponseComplete" and event["objectRef"].get("subresource") == "status":
            writes[event["objectRef"]["name"]].append(_stamp(event["requestReceivedTimestamp"]))
    return writes


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def writes_per_run(result: dict) -> dict[str, list[int]]:
    """The executor's API writes per run (by the objects' name, the run's Job name), by kind of run."""
    by_name = Counter(c["objectRef"].get("name") for c in result["calls"] if c["verb"] in WRITE_VERBS)
    return {kind: [by_name[job] for run_id, job in result["jobs"].items() if run_id.startswith(kind)]
            for kind in ("one", "two")}


def watch_lags(result: dict, kind: str) -> dict[str, list[float]]:
    """Per run of ``kind`` (``one``, ``two``), sorted: ``run`` its stored end minus the last write
    of its pods' status before it; ``watch`` the executor's pod watch delivering that status minus
    the write (the API server's and the watch's part); ``end`` the stored end minus that delivery
    (the executor's and the state write's part); ``job`` the Job seen finished minus the write
    (the Job controller's own lag: the baseline)."""
    lags: dict[str, list[float]] = {"run": [], "watch": [], "end": [], "job": []}
    for run_id, job in result["jobs"].items():
        ended, finished = result["ends"].get(run_id), result["finished"].get(job)
        if ended is None or not run_id.startswith(kind):
            continue
        writes = [(t, pod) for pod, times in result["pod_writes"].items() if pod.startswith(job + "-")
                  for t in times if t <= ended[0]]
        if not writes:
            continue
        written, pod = max(writes)
        lags["run"].append(ended[0] - written)
        if pod in result["delivered"]:
            lags["watch"].append(result["delivered"][pod] - written)
            lags["end"].append(ended[0] - result["delivered"][pod])
        if finished is not None:
            lags["job"].append(finished - written)
    return {part: sorted(values) for part, values in lags.items()}


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def report(result: dict) -> bool:
    """Print the figures and the goals as a table; True when every goal is met."""
    runs, ddp = result["runs"], result["ddp_runs"]
    writes = writes_per_run(result)
    reads = Counter(c["verb"] for c in result["calls"] if c["verb"] not in WRITE_VERBS)
    completed = sum(1 for _, state in result["ends"].values() if state == "COMPLETED")
    total = runs + ddp
    rows: list[tuple[str, str, str, Optional[bool]]] = [
        ("runs (1 learner + 2 learners)", f"{runs} + {ddp}", "", None),
        ("runs completed", f"{completed}", f"{total}", completed == total),
        ("Jobs submitted per second", f"{total / result['submit_s']:.0f}", "", None),
        ("all runs ended after", f"{result['ended_s']:.1f} s", "", None),
        ("API reads: get / list / watch, in all", f"{reads['get']} / {reads['list']} / {reads['watch']}",
         "0 get", reads["get"] == 0),
    ]
    for kind, learners, most in (("one", "1 learner", 3), ("two", "2 learners", 4)):
        if not writes[kind]:
            continue
        lags = watch_lags(result, kind)
        rows += [
            (f"API writes per run, {learners} (max, mean)", _max_mean(writes[kind]), f"<= {most}",
             max(writes[kind]) <= most),
            (f"watch lag p50 / p99 / max, {learners}:", "", "", None),
            ("  pod status -> run end stored", _spread(lags["run"]), "p99 <= 1 s",
             bool(lags["run"]) and percentile(lags["run"], .99) <= 1.0),
            ("  of which pod status -> executor's watch", _spread(lags["watch"]), "", None),
            ("  and executor's watch -> run end stored", _spread(lags["end"]), "", None),
            ("  baseline: pod status -> Job finished", _spread(lags["job"]), "", None),
            ("  run end / baseline (p50, p99)", _ratios(lags["run"], lags["job"]), "< 1", None),
        ]
    rows.append(("Jobs / Secrets / pods left after the TTL",
                 f"{result['left']['jobs']} / {result['left']['secrets']} / {result['left']['pods']}", "0",
                 not any(result["left"].values())))
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
            result = measure(cluster, ns, Path(home) / "wml", args.runs, args.ddp_runs, args.ttl_s)
    finally:
        stop_nodes(cluster, nodes)
    return 0 if report(result) else 1


if __name__ == "__main__":
    sys.exit(main())
