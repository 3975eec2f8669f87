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
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import InvalidInput, WmlError
from .base import Capacity, Executor, Launch
from .k8s_objects import (RUN_LABEL, SELECTOR, TERMINATION_GRACE_S, K8sOptions, condition, exit_code,
                          failure_reason, fresh_name, job_finished, label_value, learner_failure, load_options,
                          owned_by, pod_failed, pod_index, pod_over, run_objects, stuck_reason, waiting_note)

log = logging.getLogger("wml_backend.kubernetes")

#: How often time-based checks run (pending notes, stuck image pulls, orphan Secrets): no API calls.
SWEEP_S = 0.5
#: A Secret whose Job does not exist this long after it was made is an orphan (its start failed).
ORPHAN_SECRET_S = 60.0
#: GPUs and run slots the backend admits into the cluster when ``--gpus``/``--slots`` are not given.
DEFAULT_GPUS, DEFAULT_SLOTS = 8, 100
#: Seconds a finished Job waits for its pod's last state from the pod watch (the two streams
#: are not ordered with each other) before the run ends without it.
POD_LAG_S = 5.0
#: Lines of the pod's log kept with a run whose runner died without reporting.
LOG_TAIL_LINES = 20
#: Seconds one watch request lasts before it is renewed from the last resourceVersion.
WATCH_TIMEOUT_S = 300
#: Where a pod finds its own namespace when the backend runs in the cluster.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class ClusterError(WmlError):
    """The Kubernetes API refused or failed a request."""

    code = "kubernetes"
    http_status = 502


@dataclass
class _Run:
    """What the watches last said about one started run."""

    job_name: str
    attempt: int
    started: float
    job: Optional[dict] = None
    job_gone: bool = False
    pod: Optional[dict] = None
    pod_gone: bool = False
    stuck_since: Optional[float] = None
    over_since: Optional[float] = None
    #: Why we stopped it ourselves (an image that cannot be pulled...).
    failure: Optional[str] = None
    note: Optional[str] = None
    #: Learners of the run: more than one is an Indexed Job whose pods are followed by index.
    learners: int = 1
    #: The last state of each learner's pod, by index (a multi-learner run; ``pod`` is index 0's).
    pods: dict = None  # type: ignore[assignment]
    #: The pod of the first learner that failed (a multi-learner run).
    failed_pod: Optional[dict] = None

    def __post_init__(self) -> None:
        self.pods = {} if self.pods is None else self.pods


class KubernetesExecutor(Executor):
    """Runs each run's runner as a Job in one namespace; follows them with watches."""

    name = "kubernetes"
    #: Seconds a cancelled runner may take to store partial results before ``kill``: the pods'
    #: termination grace period (the lifecycle is asked to wait this long, not its local 10 s).
    cancel_grace_s = TERMINATION_GRACE_S

    def __init__(self, api: Any, options: K8sOptions, capacity: Capacity):
        super().__init__()
        from kubernetes import client
        self.options, self._capacity, self.ns = options, capacity, options.namespace
        self._core, self._batch = client.CoreV1Api(api), client.BatchV1Api(api)
        #: Called with (run_id, text) when the executor learns why a run waits.
        self.on_note = getattr(self, "on_note", lambda run_id, note: None)
        self._lock = threading.RLock()
        self._runs: dict[str, _Run] = {}
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
                               f"{_why(exc)}") from None
        for item in json.loads(listed.data)["items"]:
            self._secrets[item["metadata"]["name"]] = time.time()

    # -- the executor seam ----------------------------------------------------------------------
    def capacity(self) -> Capacity:
        return self._capacity

    def start(self, launch: Launch) -> dict[str, Any]:
        name = fresh_name(launch)
        secret, job, *service = run_objects(launch, self.options, name)
        self._supersede(launch.run_id)
        learners = max(launch.learners or 1, 1)
        with self._lock:
            self._runs[launch.run_id] = _Run(job_name=name, attempt=launch.attempt, started=time.monotonic(),
                                             learners=learners)
            self._by_job[name] = launch.run_id
        created = None
        try:
            self._api(self._core.create_namespaced_secret, self.ns, secret)
            with self._lock:
                self._secrets[name] = time.time()
            created = self._api(self._batch.create_namespaced_job, self.ns, job)
            for headless in service:  # a multi-learner run's: owned by the Job, deleted with it
                owned = owned_by(headless, name, created["metadata"]["uid"])
                self._api(self._core.create_namespaced_service, self.ns, owned)
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
            pods = [] if run is None else list(run.pods.values()) if run.learners > 1 else \
                [run.pod] if not run.pod_gone and run.pod is not None else []
        for pod in pods:
            self._quietly(self._core.delete_namespaced_pod, pod["metadata"]["name"], self.ns, grace_period_seconds=0)

    def reattach(self, run_id: str, handle: dict[str, Any]) -> bool:
        name = handle.get("job")
        with self._lock:
            job = self.jobs.objects.get(name)
            if job is None:
                return False
            pods = [p for p in self.pods.objects.values() if _job_of(p) == name]
            learners = handle.get("learners") or (job.get("spec") or {}).get("completions") or 1
            run = _Run(job_name=name, attempt=handle.get("attempt", 1), started=time.monotonic(), job=job,
                       learners=learners)
            for pod in pods:
                self._record_pod(run, pod, False)
            self._runs[run_id] = run
            self._by_job[name] = run_id
        return True  # the next sweep sees whether it ended while we were away

    def close(self) -> None:
        self._stop.set()
        self.jobs.stop()
        self.pods.stop()

    # -- what the watches say -----------------------------------------------------------------------
    def _on_job(self, kind: str, job: dict) -> None:
        self._observe(job["metadata"]["name"], job=job, job_gone=kind == "DELETED")

    def _on_pod(self, kind: str, pod: dict) -> None:
        self._observe(_job_of(pod), pod=pod, pod_gone=kind == "DELETED")

    def _observe(self, job_name: Optional[str], **seen: Any) -> None:
        """Record what a watch said about a run's Job or pod, then evaluate the run."""
        with self._lock:
            run_id = self._by_job.get(job_name or "")
            if run_id is None:
                return
            run = self._runs[run_id]
            if "pod" in seen:
                self._record_pod(run, seen["pod"], seen["pod_gone"])
            else:
                for key, value in seen.items():
                    setattr(run, key, value)
        self._evaluate(run_id)

    @staticmethod
    def _record_pod(run: _Run, pod: dict, gone: bool) -> None:
        """A pod's news: the run's pod, or for a multi-learner run that of one learner (by index)."""
        if run.learners <= 1:
            run.pod, run.pod_gone = pod, gone
            return
        index = pod_index(pod)
        if gone:
            run.pods.pop(index, None)
        else:
            run.pods[index] = pod
        if pod_failed(pod) and run.failed_pod is None:
            run.failed_pod = pod
        if index == 0:  # learner 1 reports the run's states; its pod stands for the run
            run.pod, run.pod_gone = pod, gone

    def _evaluate(self, run_id: str) -> None:
        """Decide what a run's Job and pod mean now, and act on it (outside the lock)."""
        with self._lock:
            run = self._runs.get(run_id)
            action = self._decide(run) if run else None
            if action in ("end", "fail"):
                self._forget(run_id)
        if action == "end":
            self._end(run_id, run)
        elif action == "fail":
            self._fail(run_id, run)
        elif action == "stop":
            self._delete_job(run.job_name, "Foreground")
        elif action == "note":
            self.on_note(run_id, run.note)

    def _decide(self, run: _Run) -> Optional[str]:
        if run.job is None and not run.job_gone:
            return None  # created, not yet seen
        if run.failed_pod is not None and run.failure is None:  # one learner failed: the run did
            run.failure = learner_failure(run.failed_pod)
            return "fail"
        job_over = run.job_gone or job_finished(run.job) or run.failure is not None
        run.over_since = (run.over_since or time.monotonic()) if job_over else None
        unseen = run.pod is None and not run.pod_gone and time.monotonic() - (run.over_since or 0) < POD_LAG_S
        if job_over and pod_over(None if run.pod_gone else run.pod) and not unseen:
            return "end"
        stuck = stuck_reason(None if run.pod_gone else run.pod)
        run.stuck_since = (run.stuck_since or time.monotonic()) if stuck else None
        if stuck and run.failure is None and time.monotonic() - run.stuck_since >= self.options.image_pull_grace_s:
            run.failure = stuck
            return "stop"
        waited = time.monotonic() - run.started >= self.options.pending_note_s
        pods = [run.pod] + [p for i, p in sorted(run.pods.items()) if i] if run.learners > 1 else [run.pod]
        notes = [waiting_note(run.job, p) for p in pods] if waited and not run.job_gone else []
        note = next((n for n in notes if n), None)
        if note and note != run.note:
            run.note = note
            return "note"
        return None

    def _end(self, run_id: str, run: _Run) -> None:
        code = exit_code(run.pod)
        reason = run.failure
        if reason is None and not (run.job and condition(run.job, "Complete")):
            reason = failure_reason(run.job, run.pod)
        tail = self._log_tail(run.pod) if code not in (0, None) and not run.pod_gone else []
        self._delete_secret(run.job_name)
        self.on_exit(run_id, run.attempt, code, reason=reason, log_tail=tail)

    def _fail(self, run_id: str, run: _Run) -> None:
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
            self._quietly(self._batch.delete_namespaced_job, name, self.ns, propagation_policy=propagation)

    def _delete_secret(self, name: str) -> None:
        with self._lock:
            known = self._secrets.pop(name, None) is not None
        if known:
            self._quietly(self._core.delete_namespaced_secret, name, self.ns)

    def _log_tail(self, pod: Optional[dict]) -> list[str]:
        if pod is None:
            return []
        try:
            resp = self._core.read_namespaced_pod_log(pod["metadata"]["name"], self.ns, tail_lines=LOG_TAIL_LINES,
                                                      _preload_content=False)
            return resp.data.decode("utf-8", "replace").splitlines()
        except Exception:
            return []

    def _api(self, method, *args, **kwargs) -> dict:
        """Call the API; a refusal becomes a one-line ``ClusterError``."""
        try:
            return json.loads(method(*args, _preload_content=False, **kwargs).data)
        except Exception as exc:
            raise ClusterError(f"kubernetes: {method.__name__} failed: {_why(exc)}") from None

    def _quietly(self, method, *args, **kwargs) -> None:
        """A deletion that may find nothing left to delete."""
        try:
            method(*args, _preload_content=False, **kwargs)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                log.warning("kubernetes: %s failed: %s", method.__name__, _why(exc))


# -- connecting and watching ----------------------------------------------------------------------
def connect(context: Optional[str] = None) -> tuple[Any, str]:
    """An API client and the default namespace: kubeconfig, or in-cluster config inside a pod."""
    from kubernetes import client, config
    in_pod = os.environ.get("KUBERNETES_SERVICE_HOST") and not context and not os.environ.get("KUBECONFIG")
    try:
        if in_pod:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            with open(SERVICE_ACCOUNT_NAMESPACE) as f:
                return client.ApiClient(configuration), f.read().strip()
        files = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")  # read now, not at import
        contexts, active = config.list_kube_config_contexts(config_file=files)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        if chosen is None:
            names = ", ".join(c["name"] for c in contexts)
            raise InvalidInput(f"WML_K8S_CONTEXT: no context {context!r} in the kubeconfig; it has: {names}")
        namespace = chosen.get("context", {}).get("namespace") or "default"
        return config.new_client_from_config(config_file=files, context=chosen["name"]), namespace
    except (config.ConfigException, OSError) as exc:
        raise InvalidInput(f"kubernetes: no usable configuration ({' '.join(str(exc).split())}); "
                           "set KUBECONFIG (and WML_K8S_CONTEXT) or run the backend in a pod") from None


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Informer:
    """List, then watch, one kind of object with our labels; ``handle(type, obj)`` per change.

    ``objects`` (by name) is kept under ``lock``. A watch that ends is renewed from the last
    resourceVersion; one that expired (410 Gone) lists again and reports what vanished meanwhile.
    """

    def __init__(self, list_fn, namespace: str, handle, lock: threading.RLock):
        self._list, self.namespace, self._handle, self._lock = list_fn, namespace, handle, lock
        self.objects: dict[str, dict] = {}
        self.version: Optional[str] = None
        self._resp = None

    def sync(self) -> None:
        """List everything; report changes (and deletions) against what was known."""
        data = json.loads(self._list(self.namespace, label_selector=SELECTOR, _preload_content=False).data)
        listed = {item["metadata"]["name"]: item for item in data["items"]}
        with self._lock:
            gone = [obj for name, obj in self.objects.items() if name not in listed]
            self.objects, self.version = listed, data["metadata"]["resourceVersion"]
        for obj in gone:
            self._handle("DELETED", obj)
        for obj in listed.values():
            self._handle("MODIFIED", obj)

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop``; re-list after a 410 or an error (backing off)."""
        delay = 0.5
        while not stop.is_set():
            try:
                self._watch(stop)
                delay = 0.5
            except Gone:
                self._resync(stop)
            except Exception as exc:
                if stop.is_set():
                    return
                log.warning("kubernetes: watch failed (%s); listing again in %.1f s", _why(exc), delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
                self._resync(stop)

    def _resync(self, stop: threading.Event) -> None:
        try:
            self.sync()
        except Exception as exc:
            if not stop.is_set():
                log.warning("kubernetes: list failed: %s", _why(exc))

    def _watch(self, stop: threading.Event) -> None:
        from kubernetes.watch.watch import iter_resp_lines
        self._resp = self._list(self.namespace, label_selector=SELECTOR, watch=True, resource_version=self.version,
                                timeout_seconds=WATCH_TIMEOUT_S, allow_watch_bookmarks=True, _preload_content=False)
        try:
            for line in iter_resp_lines(self._resp):
                if stop.is_set():
                    return
                self._event(json.loads(line))
        finally:
            self._resp.release_conn()

    def _event(self, event: dict) -> None:
        obj = event["object"]
        if event["type"] == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ClusterError(f"kubernetes: watch error {obj.get('code')}: {obj.get('message')}")
        with self._lock:
            self.version = obj["metadata"]["resourceVersion"]
            if event["type"] == "BOOKMARK":
                return
            name = obj["metadata"]["name"]
            if event["type"] == "DELETED":
                self.objects.pop(name, None)
            else:
                self.objects[name] = obj
        self._handle(event["type"], obj)

    def stop(self) -> None:
        """End the current watch request now."""
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:
                pass


def _job_of(pod: dict) -> Optional[str]:
    labels = pod["metadata"].get("labels", {})
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")


def _why(exc: Exception) -> str:
    """The API's own message for a failed call, on one line."""
    body = getattr(exc, "body", None)
    try:
        status = json.loads(body)
        return f"{status.get('code')} {status.get('reason')}: {status.get('message')}"
    except (TypeError, ValueError):
        return " ".join(str(exc).split()) or type(exc).__name__
