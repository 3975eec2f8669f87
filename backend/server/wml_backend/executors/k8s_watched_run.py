"""One started run as the watches last saw it, and what that means now: end, fail, stop, note, or wait.

The executor records each Job, pod and FailedCreate event in the run's ``WatchedRun`` and asks
``decide`` what to do; the answer depends on those events and on time (a pod's last state that
lags behind its Job's, an image that cannot be pulled for too long, a pod the API refuses to
create, a Job past its deadline, a run pending long enough to say why).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from wml_backend.executors.k8s_options import K8sOptions
from wml_backend.executors.k8s_status import (
    create_failure,
    deadline_reason,
    job_finished,
    job_started_at,
    learner_failure,
    pod_failed,
    pod_finished,
    pod_index,
    pod_over,
    scheduled_at,
    stuck_reason,
    suspended,
    waiting_note,
)

#: Seconds a finished Job waits for its pod's last state from the pod watch (the two streams
#: are not ordered with each other) before the run ends without it.
POD_LAG_S = 5.0
#: Seconds a run whose Job Kueue suspended again waits for Kueue's event that says why (which
#: workload preempted it: another watch, not ordered with the Job's) before it ends without it.
KUEUE_EVENT_LAG_S = 3.0


@dataclass
class WatchedRun:
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
    #: The indexes of the learners whose pods succeeded (a multi-learner run): all of them, and
    #: the run is over without waiting for its Job's status (the Job controller's is later).
    succeeded: set = None  # type: ignore[assignment]
    #: Whether the run's Secret is deleted as the run ends (``secret_outlives_attempt``).
    delete_secret: bool = False
    #: Whether the executor has said that the run's GPUs are bound.
    bound: bool = False
    #: The last FailedCreate message of the Job (the API refused to create a pod), if any.
    create_error: Optional[str] = None
    #: Why the cluster is stopping the run (its deadline), once said (``"stopping"``).
    stopping: Optional[str] = None
    #: What Kueue said when it suspended the admitted Job again (whose workload preempted it).
    kueue_stop: Optional[str] = None

    def __post_init__(self) -> None:
        self.pods = {} if self.pods is None else self.pods
        self.succeeded = set() if self.succeeded is None else self.succeeded

    @property
    def live_pod(self) -> Optional[dict]:
        """The run's pod (learner 1's), or None once it is gone."""
        return None if self.pod_gone else self.pod

    def live_pods(self) -> list[dict]:
        """The pods of the run the watches have not seen deleted: every learner's."""
        if self.learners > 1:
            return list(self.pods.values())
        return [self.pod] if not self.pod_gone and self.pod is not None else []

    def record_pod(self, pod: dict, gone: bool) -> None:
        """A pod's news: the run's pod, or for a multi-learner run that of one learner (by index)."""
        if self.learners <= 1:
            self.pod, self.pod_gone = pod, gone
            return
        index = pod_index(pod)
        if gone:
            self.pods.pop(index, None)
        else:
            self.pods[index] = pod
        if pod_failed(pod) and self.failed_pod is None:
            self.failed_pod = pod
        elif pod_finished(pod) and not pod_failed(pod):
            self.succeeded.add(index)
        if index == 0:  # learner 1 reports the run's states; its pod stands for the run
            self.pod, self.pod_gone = pod, gone

    def newly_bound(self) -> Optional[float]:
        """When learner 1's pod was bound to a node, the first time the watches show it bound."""
        at = None if self.bound else scheduled_at(self.live_pod)
        self.bound = self.bound or at is not None
        return at

    def admitted_at(self, started: float) -> Optional[float]:
        """None while the Job waits suspended for Kueue; then when Kueue admitted it (the Job's
        ``startTime``, which the Job controller sets as it resumes), else ``started``."""
        if suspended(self.job) and not self.bound:
            return None
        return job_started_at(self.job) or started

    def decide(self, options: K8sOptions) -> Optional[str]:
        """What to do now: ``"end"``, ``"fail"`` (a learner failed), ``"stopping"`` (the cluster
        stops it: ``stopping`` says why), ``"stop"`` (stuck), ``"note"``, or None."""
        if self.job is None and not self.job_gone:
            return None  # created, not yet seen
        if self.stopping is None and deadline_reason(self.job):  # before its runner hears of it
            self.stopping = deadline_reason(self.job)
            return "stopping"
        if self.failed_pod is not None and self.failure is None:  # one learner failed: the run did
            self.failure = learner_failure(self.failed_pod)
            return "fail"
        if self._over():
            return "end"
        if self._stuck_too_long(options.image_pull_grace_s) or self._refused():
            return "stop"
        return "note" if self._new_note(options.pending_note_s) else None

    def _over(self) -> bool:
        """Whether the Job and its pod are both over (the pod's last state given ``POD_LAG_S``)."""
        job_over = self.job_gone or job_finished(self.job) or self.failure is not None or self.suspended_again \
            or (self._pods_finished() and not suspended(self.job))
        self.over_since = (self.over_since or time.monotonic()) if job_over else None
        waited = time.monotonic() - (self.over_since or 0)
        unseen = self.pod is None and not self.pod_gone and waited < POD_LAG_S
        unexplained = self.suspended_again and self.kueue_stop is None and waited < KUEUE_EVENT_LAG_S
        return job_over and pod_over(self.live_pod) and not unseen and not unexplained

    def _pods_finished(self) -> bool:
        """Whether the pods' own statuses say how the Job ends, before the Job controller does
        (``backoffLimit`` 0, ``restartPolicy: Never``): the one learner's pod ended by itself, or
        every learner's pod succeeded (one that fails fails the run sooner: ``failed_pod``)."""
        if self.learners <= 1:
            return pod_finished(self.live_pod)
        return len(self.succeeded) >= self.learners

    @property
    def suspended_again(self) -> bool:
        """Whether Kueue suspended the Job again after its pod had been bound (it preempted the
        run, or its quota shrank): the Job controller deletes its pods; the run ends, disrupted."""
        return self.bound and suspended(self.job)

    def _stuck_too_long(self, grace_s: float) -> bool:
        """Whether the runner container has not been able to start for ``grace_s`` (sets ``failure``)."""
        stuck = stuck_reason(self.live_pod, secret=self.job_name)  # the Secret has the Job's name
        self.stuck_since = (self.stuck_since or time.monotonic()) if stuck else None
        if stuck and self.failure is None and time.monotonic() - self.stuck_since >= grace_s:
            self.failure = stuck
            return True
        return False

    def _refused(self) -> bool:
        """Whether the API refuses the run's pods for good: a FailedCreate it will repeat (Pod
        Security, a LimitRange), with no pod made since (sets ``failure``). A quota that may free
        up is only a note, until the lifecycle's pending timeout."""
        if self.failure is not None or self.live_pods() or self.job_gone:
            return False
        self.failure = create_failure(self.create_error)
        return self.failure is not None

    def _new_note(self, pending_s: float) -> bool:
        """Whether, pending ``pending_s`` or more, the run waits for a new reason (sets ``note``)."""
        waited = time.monotonic() - self.started >= pending_s
        pods = [self.pod] + [p for i, p in sorted(self.pods.items()) if i] if self.learners > 1 else [self.pod]
        notes = [waiting_note(self.job, p, self.create_error) for p in pods] if waited and not self.job_gone else []
        note = next((n for n in notes if n), None)
        if note and note != self.note:
            self.note = note
            return True
        return False
