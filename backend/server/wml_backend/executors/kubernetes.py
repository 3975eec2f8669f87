"""The Kubernetes executor: each run one batch/v1 Job, followed by a watch of Jobs and Pods.

A run's start is three writes at most on the happy path: its Secret (runner token, store
credentials), its Job, and the Secret's deletion once the Job is over. A run of N learners is an
Indexed Job of N pods plus a headless Service (owned by the Job, so it goes with it): four
writes. The first learner pod that fails fails the run, naming the learner, and the Job's
deletion stops the others. Its state comes from
two list-then-watch streams (Jobs and Pods with our labels), never from polling a run.
Jobs have no owner, so they run on while the backend restarts; ``reattach`` finds them again.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Optional

from .base import Capacity, Executor, Launch
from .k8s_client import ClusterError, call, connect, delete_quietly, why
from .k8s_names import RUN_LABEL, SELECTOR, label_value
from .k8s_objects import TERMINATION_GRACE_S, fresh_name, owned_by, run_objects
from .k8s_options import K8sOptions, load_options
from .k8s_watched_run import WatchedRun
from .k8s_status import condition, exit_code, failure_reason, job_finished, job_of
from .k8s_watch import Informer

#: How often time-based checks run (pending notes, stuck image pulls, orphan Secrets): no API calls.
SWEEP_S = 0.5
#: A Secret whose Job does not exist this long after it was made is an orphan (its start failed).
ORPHAN_SECRET_S = 60.0
#: GPUs and run slots the backend admits into the cluster when ``--gpus``/``--slots`` are not given.
DEFAULT_GPUS, DEFAULT_SLOTS = 8, 100
#: Lines of the pod's log kept with a run whose runner died without reporting.
LOG_TAIL_LINES = 20


class KubernetesExecutor(Executor):
    """Runs each run's runner as a Job in one namespace; follows them with watches."""

    name = "kubernetes"
    binds_gpus_later = True  # Kueue admits the Job, the scheduler binds its pod: billing starts then
    #: Seconds a cancelled runner may take to store partial results before ``kill``: the pods'
    #: termination grace period (the lifecycle is asked to wait this long, not its local 10 s).
    cancel_grace_s = TERMINATION_GRACE_S

    def __init__(self, api: Any, options: K8sOptions, capacity: Capacity):
        super().__init__()
        from kubernetes import client
        self.options, self._capacity, self.ns = options, capacity, options.namespace
        self._core, self._batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self._lock = threading.RLock()
        self._runs: dict[str, WatchedRun] = {}
        self._by_job: dict[str, str] = {}
        self._secrets: dict[str, float] = {}
        self._stop = threading.Event()
        self.jobs = Informer(self._batch.list_namespaced_job, self.ns, self._on_job, self._lock)
        self.pods = Informer(self._core.list_namespaced_pod, self.ns, self._on_pod, self._lock)
        self._first_sync()
        for target in (self.jobs.run, self.pods.run, self._sweep):
            threading.Thread(target=target, args=(self._stop,), daemon=True, name="wml-k8s").start()

    @classmethod
    def from_settings(cls, settings) -> "KubernetesExecutor":
        """Connect with kubeconfig (``KUBECONFIG``, ``WML_K8S_CONTEXT``) or in-cluster config."""
        api, namespace = connect(os.environ.get("WML_K8S_CONTEXT"))
        options = load_options(os.environ, namespace, settings.public_url)
        gpus = DEFAULT_GPUS if settings.gpus is None else settings.gpus
        return cls(api, options, Capacity(gpu_ids=tuple(range(gpus)), slots=settings.slots or DEFAULT_SLOTS))

    def _first_sync(self) -> None:
        try:
            self.jobs.sync()
            self.pods.sync()
            listed = self._core.list_namespaced_secret(self.ns, label_selector=SELECTOR,
                                                       _preload_content=False)
        except Exception as exc:
            raise ClusterError(f"kubernetes: cannot list Jobs, Pods and Secrets in namespace {self.ns!r}: "
                               f"{why(exc)}") from None
        for item in json.loads(listed.data)["items"]:
            self._secrets[item["metadata"]["name"]] = time.time()

    # -- the executor seam ----------------------------------------------------------------------
    def capacity(self) -> Capacity:
        """The GPUs and run slots the backend admits into the cluster."""
        return self._capacity

    def start(self, launch: Launch) -> dict[str, Any]:
        """Create the run's Secret, Job (and headless Service); the handle names the Job."""
        name = fresh_name(launch)
        secret, job, *service = run_objects(launch, self.options, name)
        self._supersede(launch.run_id)
        learners = max(launch.learners or 1, 1)
        with self._lock:
            self._runs[launch.run_id] = WatchedRun(job_name=name, attempt=launch.attempt, started=time.monotonic(),
                                                 learners=learners)
            self._by_job[name] = launch.run_id
        created = None
        try:
            call(self._core.create_namespaced_secret, self.ns, secret)
            with self._lock:
                self._secrets[name] = time.time()
            created = call(self._batch.create_namespaced_job, self.ns, job)
            for headless in service:  # a multi-learner run's: owned by the Job, deleted with it
                owned = owned_by(headless, name, created["metadata"]["uid"])
                call(self._core.create_namespaced_service, self.ns, owned)
        except ClusterError:
            self._forget(launch.run_id)
            if created is not None:
                self._delete_job(name, "Background")
            self._delete_secret(name)  # if it was made
            raise
        handle = {"namespace": self.ns, "job": name, "uid": created["metadata"]["uid"], "attempt": launch.attempt}
        if learners > 1:
            handle["learners"] = learners
        return handle

    def cancel(self, run_id: str, handle: dict[str, Any]) -> None:
        """Delete the Job, pods first: the runner gets SIGTERM and stores partial results."""
        self._delete_job(handle.get("job"), "Foreground")

    def kill(self, run_id: str, handle: dict[str, Any]) -> None:
        """Delete the run's pods at once (no grace period)."""
        with self._lock:
            run = self._runs.get(run_id)
            pods = [] if run is None else run.live_pods()
        for pod in pods:
            delete_quietly(self._core.delete_namespaced_pod, pod["metadata"]["name"], self.ns, grace_period_seconds=0)

    def reattach(self, run_id: str, handle: dict[str, Any]) -> bool:
        """Follow again a run's Job left by an earlier backend; False when the Job is gone."""
        name = handle.get("job")
        with self._lock:
            job = self.jobs.objects.get(name)
            if job is None:
                return False
            pods = [p for p in self.pods.objects.values() if job_of(p) == name]
            learners = handle.get("learners") or (job.get("spec") or {}).get("completions") or 1
            run = WatchedRun(job_name=name, attempt=handle.get("attempt", 1), started=time.monotonic(), job=job,
                           learners=learners)
            for pod in pods:
                run.record_pod(pod, False)
            self._runs[run_id] = run
            self._by_job[name] = run_id
        return True  # the next sweep sees whether it ended while we were away

    def close(self) -> None:
        """Stop the watches and the sweep; the runs' Jobs run on."""
        self._stop.set()
        self.jobs.stop()
        self.pods.stop()

    # -- what the watches say -----------------------------------------------------------------------
    def _on_job(self, kind: str, job: dict) -> None:
        self._observe(job["metadata"]["name"], job=job, job_gone=kind == "DELETED")

    def _on_pod(self, kind: str, pod: dict) -> None:
        self._observe(job_of(pod), pod=pod, pod_gone=kind == "DELETED")

    def _observe(self, job_name: Optional[str], **seen: Any) -> None:
        """Record what a watch said about a run's Job or pod, then evaluate the run."""
        with self._lock:
            run_id = self._by_job.get(job_name or "")
            if run_id is None:
                return
            run = self._runs[run_id]
            if "pod" in seen:
                run.record_pod(seen["pod"], seen["pod_gone"])
            else:
                for key, value in seen.items():
                    setattr(run, key, value)
        self._evaluate(run_id)

    def _evaluate(self, run_id: str) -> None:
        """Decide what a run's Job and pod mean now, and act on it (outside the lock)."""
        with self._lock:
            run = self._runs.get(run_id)
            bound_at = run.newly_bound() if run else None
            action = run.decide(self.options) if run else None
            if action in ("end", "fail"):
                self._forget(run_id)
        if bound_at is not None:
            self.on_bound(run_id, run.attempt, bound_at)
        if action == "end":
            self._end(run_id, run)
        elif action == "fail":
            self._fail(run_id, run)
        elif action == "stop":
            self._delete_job(run.job_name, "Foreground")
        elif action == "note":
            self.on_note(run_id, run.note)

    def _end(self, run_id: str, run: WatchedRun) -> None:
        code = exit_code(run.pod)
        reason = run.failure
        if reason is None and not (run.job and condition(run.job, "Complete")):
            reason = failure_reason(run.job, run.pod)
        tail = self._log_tail(run.pod) if code not in (0, None) and not run.pod_gone else []
        self._delete_secret(run.job_name)
        self.on_exit(run_id, run.attempt, code, reason=reason, log_tail=tail)

    def _fail(self, run_id: str, run: WatchedRun) -> None:
        """A learner of a multi-learner run failed: the run fails now, and the Job's deletion
        stops the other learners (their runners store what they have; learner 1 reports nothing)."""
        pod = run.failed_pod
        self._delete_secret(run.job_name)
        self.on_exit(run_id, run.attempt, exit_code(pod), reason=run.failure, log_tail=self._log_tail(pod))
        self._delete_job(run.job_name, "Foreground")

    # -- housekeeping ---------------------------------------------------------------------------
    def _sweep(self, stop: threading.Event) -> None:
        """Re-check time-based conditions and delete orphan Secrets, from the cache only."""
        while not stop.wait(SWEEP_S):
            for run_id in list(self._runs):
                self._evaluate(run_id)
            for name in self._orphan_secrets():
                self._delete_secret(name)

    def _orphan_secrets(self) -> list[str]:
        with self._lock:
            live = {n for n, j in self.jobs.objects.items() if not job_finished(j)} | set(self._by_job)
            return [n for n, made in self._secrets.items()
                    if n not in live and (n in self.jobs.objects or time.time() - made > ORPHAN_SECRET_S)]

    def _supersede(self, run_id: str) -> None:
        """Delete a live Job left by an earlier start of this run (a crash between start and handle)."""
        with self._lock:
            stale = [n for n, j in self.jobs.objects.items() if n not in self._by_job and not job_finished(j)
                     and j["metadata"].get("labels", {}).get(RUN_LABEL) == label_value(run_id)]
        for name in stale:
            self._delete_job(name, "Background")

    def _forget(self, run_id: str) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
            if run:
                self._by_job.pop(run.job_name, None)

    def _delete_job(self, name: Optional[str], propagation: str) -> None:
        if name:
            delete_quietly(self._batch.delete_namespaced_job, name, self.ns, propagation_policy=propagation)

    def _delete_secret(self, name: str) -> None:
        with self._lock:
            known = self._secrets.pop(name, None) is not None
        if known:
            delete_quietly(self._core.delete_namespaced_secret, name, self.ns)

    def _log_tail(self, pod: Optional[dict]) -> list[str]:
        if pod is None:
            return []
        try:
            resp = self._core.read_namespaced_pod_log(pod["metadata"]["name"], self.ns, tail_lines=LOG_TAIL_LINES,
                                                      _preload_content=False)
            return resp.data.decode("utf-8", "replace").splitlines()
        except Exception:
            return []
