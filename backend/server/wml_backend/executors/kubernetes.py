"""The Kubernetes executor: each run one batch/v1 Job, followed by watches of Jobs, Pods and events.

A run is two writes on the happy path: its Job and its Secret (the runner's token; owned by the
Job, so the garbage collector deletes it with the Job after the TTL: the token is revoked when the
attempt ends). The pod waits for its Secret, made just after the Job. A Secret that also holds
store keys, which outlive the attempt, is deleted as the run ends: a third write. A run of N
learners is an Indexed Job of N pods plus a headless Service and a NetworkPolicy (owned by the Job
too): four writes. It ends once every learner's pod has succeeded; the first learner pod that
fails fails the run, naming the learner, and the Job's deletion stops the others. Its state comes
from three list-then-watch streams (Jobs and Pods with our labels, and the Jobs' FailedCreate
events), never from polling a run; nothing lists Secrets. A run's end (``on_exit``, then its
cleanup) is handled off the watch threads, so that no API call or state write delays what the
watches say next. Jobs have no owner, so they run on while the backend restarts; ``reattach``
finds them again and ``reconcile`` deletes those of runs that ended meanwhile.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from wml_backend.executors.base import Capacity, Executor, Launch
from wml_backend.executors.k8s_kueue import KueueQueues
from wml_backend.executors.k8s_client import (
    CALL_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    ClusterError,
    call,
    connect,
    delete_quietly,
    log,
    why,
)
from wml_backend.executors.k8s_names import ATTEMPT_LABEL, RUN_LABEL, label_value
from wml_backend.executors.k8s_objects import fresh_name, owned_by, run_objects, secret_outlives_attempt
from wml_backend.executors.k8s_options import K8sOptions, load_options, with_store
from wml_backend.executors.k8s_pod import TERMINATION_GRACE_S
from wml_backend.executors.k8s_watched_run import WatchedRun
from wml_backend.executors.k8s_status import (
    condition,
    disruption_reason,
    exit_code,
    failure_reason,
    job_finished,
    job_of,
)
from wml_backend.executors.k8s_watch import Informer

#: How often time-based checks run (pending notes, stuck image pulls): no API calls.
SWEEP_S = 0.5
#: The events that say the Job controller could not create a Job's pod (Pod Security, a quota...).
FAILED_CREATE = "involvedObject.kind=Job,reason=FailedCreate"
#: The events in which Kueue says why it stopped (suspended) an admitted Job: preempted by whom.
KUEUE_STOPPED = "involvedObject.kind=Job,reason=Stopped"
#: GPUs and run slots the backend admits into the cluster when ``--gpus``/``--slots`` are not given.
DEFAULT_GPUS, DEFAULT_SLOTS = 8, 100
#: Lines of the pod's log kept with a run whose runner died without reporting.
LOG_TAIL_LINES = 20
#: Threads that end runs (``on_exit``: the run's state write) and clean up after them (API calls),
#: apart from the watch threads: one slow call does not hold up the other runs' ends.
ENDING_THREADS = 4


class KubernetesExecutor(Executor):
    """Runs each run's runner as a Job in one namespace; follows them with watches."""

    name = "kubernetes"
    binds_gpus_later = True  # Kueue admits the Job, the scheduler binds its pod: billing starts then
    #: Seconds a cancelled runner may take to store partial results before ``kill``: the pods'
    #: termination grace period, after which the kubelet kills them anyway.
    cancel_grace_s = float(TERMINATION_GRACE_S)

    def __init__(self, api: Any, options: K8sOptions, capacity: Capacity):
        super().__init__()
        from kubernetes import client
        self.options, self._capacity, self.ns = options, capacity, options.namespace
        self._core, self._batch = client.CoreV1Api(api), client.BatchV1Api(api)
        #: How a multi-learner run's other objects are created, by kind.
        self._create = {"Service": self._core.create_namespaced_service,
                        "NetworkPolicy": client.NetworkingV1Api(api).create_namespaced_network_policy}
        self._lock = threading.RLock()
        self._runs: dict[str, WatchedRun] = {}
        self._by_job: dict[str, str] = {}
        self._stop = threading.Event()
        self._ending = ThreadPoolExecutor(ENDING_THREADS, thread_name_prefix="wml-k8s-end")
        self.jobs = Informer(self._batch.list_namespaced_job, self.ns, self._on_job, self._lock)
        self.pods = Informer(self._core.list_namespaced_pod, self.ns, self._on_pod, self._lock)
        self.events = Informer(self._core.list_namespaced_event, self.ns, self._on_event, self._lock,
                               label_selector=None, field_selector=FAILED_CREATE)
        self._informers = [self.jobs, self.pods, self.events]
        self.queues: Optional[KueueQueues] = None
        if options.kueue_queue:  # Kueue holds the accounts' GPU quotas; it says why it preempts
            self.queues = KueueQueues(api, self.ns, options.kueue_queue)
            self._informers.append(Informer(self._core.list_namespaced_event, self.ns, self._on_kueue_stop,
                                            self._lock, label_selector=None, field_selector=KUEUE_STOPPED))
        self._first_sync()
        for target in [i.run for i in self._informers] + [self._sweep]:
            threading.Thread(target=target, args=(self._stop,), daemon=True, name="wml-k8s").start()

    @classmethod
    def from_settings(cls, settings) -> "KubernetesExecutor":
        """Connect with kubeconfig (``KUBECONFIG``, ``WML_K8S_CONTEXT``) or in-cluster config."""
        check_settings(settings)  # before connecting: a bad setting is said first
        api, namespace = connect(os.environ.get("WML_K8S_CONTEXT"))
        options = with_store(load_options(os.environ, namespace, settings.public_url), settings.store_config)
        gpus = DEFAULT_GPUS if settings.gpus is None else settings.gpus
        return cls(api, options, Capacity(gpu_ids=tuple(range(gpus)), slots=settings.slots or DEFAULT_SLOTS))

    def _first_sync(self) -> None:
        try:
            for informer in self._informers:
                informer.sync()
        except Exception as exc:
            raise ClusterError(f"kubernetes: cannot list Jobs, Pods and events in namespace {self.ns!r}: "
                               f"{why(exc)}") from None

    # -- the executor seam ----------------------------------------------------------------------
    def capacity(self) -> Capacity:
        """The GPUs and run slots the backend admits into the cluster (with Kueue, slots only:
        Kueue holds each account's GPU quota)."""
        return dataclasses.replace(self._capacity, counts_gpus=False) if self.queues else self._capacity

    def sync_account(self, name: str, gpus: int, cpus: Optional[float] = None,
                     memory_bytes: Optional[int] = None) -> None:
        """With Kueue: make or update the account's ClusterQueue (its GPU quota) and LocalQueue."""
        if self.queues is not None:
            self.queues.apply(name, gpus, cpus, memory_bytes)

    def pending_since(self, run_id: str, started: float) -> Optional[float]:
        """With Kueue: None while Kueue has not admitted the run's Job, then since its admission."""
        with self._lock:
            run = self._runs.get(run_id)
            if self.queues is None or run is None:
                return started
            return run.admitted_at(started)

    def start(self, launch: Launch) -> dict[str, Any]:
        """Create the run's Job, then its Secret (and headless Service and NetworkPolicy) owned
        by the Job; the handle names the Job. A run the cluster cannot hold (a data volume with
        no claim) is an ``InvalidInput`` before any write."""
        name = fresh_name(launch)
        job, secret, *peers = run_objects(launch, self.options, name)
        self._supersede(launch.run_id)
        learners = max(launch.learners or 1, 1)
        delete_secret = secret_outlives_attempt(launch)
        with self._lock:
            self._runs[launch.run_id] = WatchedRun(job_name=name, attempt=launch.attempt, started=time.monotonic(),
                                                   learners=learners, delete_secret=delete_secret)
            self._by_job[name] = launch.run_id
        created = None
        try:
            created = call(self._batch.create_namespaced_job, self.ns, job)
            uid = created["metadata"]["uid"]
            call(self._core.create_namespaced_secret, self.ns, owned_by(secret, name, uid))
            for obj in peers:  # a multi-learner run's headless Service and NetworkPolicy
                call(self._create[obj["kind"]], self.ns, owned_by(obj, name, uid))
        except ClusterError:
            self._forget(launch.run_id)
            if created is not None:
                self._delete_job(name, "Background")  # its Secret and Service, if made, with it
            raise
        handle = {"namespace": self.ns, "job": name, "uid": created["metadata"]["uid"], "attempt": launch.attempt,
                  "delete_secret": delete_secret}
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
                             learners=learners, delete_secret=handle.get("delete_secret", True))
            for pod in pods:
                run.record_pod(pod, False)
            self._runs[run_id] = run
            self._by_job[name] = run_id
        return True  # the next sweep sees whether it ended while we were away

    def reconcile(self, live: Callable[[str, int], bool]) -> None:
        """After ``reattach``: delete the Jobs (their Secrets and Services with them) of run
        attempts that ``live`` says are over, and those of a run that another Job now runs.
        A Job of a run the backend does not know is left alone."""
        with self._lock:
            followed = {run_id: run.job_name for run_id, run in self._runs.items()}
            jobs = [(n, j["metadata"].get("labels") or {}) for n, j in self.jobs.objects.items()]
        for name, labels in jobs:
            run_id, attempt = labels.get(RUN_LABEL), labels.get(ATTEMPT_LABEL, "")
            if name in self._by_job or not run_id or not attempt.isdigit():
                continue
            if run_id in followed or not live(run_id, int(attempt)):
                log.info("kubernetes: deleting Job %s, left by run %s (attempt %s), which is over",
                         name, run_id, attempt)
                self._delete_job(name, "Background")

    def close(self) -> None:
        """Stop the watches and the sweep, and end the runs whose ends were seen; the runs'
        Jobs run on."""
        self._stop.set()
        for informer in self._informers:
            informer.stop()
        self._ending.shutdown(wait=True)

    # -- what the watches say -----------------------------------------------------------------------
    def _on_job(self, kind: str, job: dict) -> None:
        self._observe(job["metadata"]["name"], job=job, job_gone=kind == "DELETED")

    def _on_pod(self, kind: str, pod: dict) -> None:
        self._observe(job_of(pod), pod=pod, pod_gone=kind == "DELETED")

    def _on_event(self, kind: str, event: dict) -> None:
        """A FailedCreate event of a Job: the API refused to create its pod, and says why."""
        if kind != "DELETED":  # an event that expired says nothing new
            self._observe((event.get("involvedObject") or {}).get("name"), create_error=event.get("message"))

    def _on_kueue_stop(self, kind: str, event: dict) -> None:
        """Kueue's word on why it suspended an admitted Job (preempted to accommodate a workload)."""
        if kind != "DELETED":
            self._observe((event.get("involvedObject") or {}).get("name"), kueue_stop=event.get("message"))

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
            self._later(self._end, run_id, run)
        elif action == "fail":
            self._later(self._fail, run_id, run)
        elif action == "stop":
            self._later(self._delete_job, run.job_name, "Foreground")
        elif action == "stopping":
            self.on_stopping(run_id, run.attempt, run.stopping)
        elif action == "note":
            self.on_note(run_id, run.note)

    def _later(self, action: Callable[..., None], *args: Any) -> None:
        """Do ``action`` on an ending thread, not the watch's (a failure is logged)."""
        def logged() -> None:
            try:
                action(*args)
            except Exception:
                log.exception("kubernetes: %s%r failed", action.__name__, args[:1])
        try:
            self._ending.submit(logged)
        except RuntimeError:  # closed: a later executor sees the run again (``reattach``)
            pass

    def _end(self, run_id: str, run: WatchedRun) -> None:
        """Say the run ended (``on_exit``), then clean up what it leaves."""
        code = exit_code(run.pod)
        reason = run.failure
        if reason is None and not (run.job and condition(run.job, "Complete")):
            reason = failure_reason(run.job, run.pod)
        tail = self._log_tail(run.pod) if code not in (0, None) and not run.pod_gone else []
        disruption = None if run.failure is not None else disruption_reason(run.job, run.pod, run.kueue_stop)
        self.on_exit(run_id, run.attempt, code, reason=reason, log_tail=tail, disruption=disruption)
        if run.delete_secret:  # now: its store keys need not wait for the Job's TTL
            self._delete_secret(run.job_name)
        if run.suspended_again:  # Kueue would admit it again later, with a token that is no more
            self._delete_job(run.job_name, "Background")

    def _fail(self, run_id: str, run: WatchedRun) -> None:
        """A learner of a multi-learner run failed: the run fails now, and the Job's deletion
        stops the other learners (their runners store what they have; learner 1 reports nothing)."""
        pod = run.failed_pod
        self.on_exit(run_id, run.attempt, exit_code(pod), reason=run.failure, log_tail=self._log_tail(pod))
        self._delete_job(run.job_name, "Foreground")  # its Secret, Service and NetworkPolicy with it

    # -- housekeeping ---------------------------------------------------------------------------
    def _sweep(self, stop: threading.Event) -> None:
        """Re-check time-based conditions, from the cache only."""
        while not stop.wait(SWEEP_S):
            for run_id in list(self._runs):
                self._evaluate(run_id)

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
        """Delete the run's Secret (named as its Job); one made by an earlier backend too."""
        delete_quietly(self._core.delete_namespaced_secret, name, self.ns)

    def _log_tail(self, pod: Optional[dict]) -> list[str]:
        if pod is None:
            return []
        try:
            resp = self._core.read_namespaced_pod_log(pod["metadata"]["name"], self.ns, tail_lines=LOG_TAIL_LINES,
                                                      _preload_content=False,
                                                      _request_timeout=(CONNECT_TIMEOUT_S, CALL_TIMEOUT_S))
            return resp.data.decode("utf-8", "replace").splitlines()
        except Exception:
            return []


def check_settings(settings, env=os.environ) -> None:
    """Refuse, before connecting, a configuration the executor cannot run with: a bad
    ``WML_K8S_*`` setting, or the embedded file store with no claim (pods cannot read the
    backend's disk). ``wml backend start`` asks this before it starts the daemon."""
    with_store(load_options(env, "default", settings.public_url), settings.store_config)
