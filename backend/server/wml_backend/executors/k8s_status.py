"""What the cluster says about a run, read from its Job and pods: over or not, exit code, and why.

Pure functions of the objects the watches deliver: whether a Job or pod is over, the runner's exit
code, which learner a pod is, when its GPUs were bound, and in words a user can act on why a run
failed (out of memory, evicted, timed out...), cannot start (image pull, container config) or
still waits (Kueue, no GPU).
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from types import MappingProxyType
from typing import Any, Mapping, Optional

from wml_backend.executors.k8s_names import GPU_RESOURCE, INDEX_ANNOTATION, JOB_NAME_LABEL, KUEUE_LABEL

#: Waiting reasons of a container whose image cannot be pulled (retried by the kubelet, maybe forever).
IMAGE_PULL_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
#: Waiting reasons of a container the kubelet cannot create (a missing Secret, a bad command...).
CONTAINER_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
#: Words of a FailedCreate event that a later try may not meet (a ResourceQuota frees up as
#: other pods end); any other refusal (Pod Security, a LimitRange...) will be met again.
TRANSIENT_CREATE_ERRORS = ("exceeded quota",)
#: What a pod's DisruptionTarget condition means, for the run's reason.
DISRUPTIONS = MappingProxyType({
    "DeletionByTaintManager": "node lost (its node became unreachable or was tainted NoExecute)",
    "DeletionByPodGC": "node lost (its node was removed)",
    "PreemptionByScheduler": "preempted by a higher-priority pod",
    "EvictionByEvictionAPI": "evicted (e.g. a node drain)",
    "TerminationByKubelet": "terminated by the kubelet (node shutdown or resource pressure)"})


def condition(obj: Optional[Mapping[str, Any]], kind: str) -> Optional[dict[str, Any]]:
    """The ``status.conditions`` entry of type ``kind`` whose status is True, if any."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def job_finished(job: Mapping[str, Any]) -> bool:
    """Whether Kubernetes says the Job is over (Complete or Failed)."""
    return bool(condition(job, "Complete") or condition(job, "Failed"))


def job_of(pod: dict) -> Optional[str]:
    """The name of the Job a pod belongs to, from the Job controller's label."""
    labels = pod["metadata"].get("labels", {})
    return labels.get(JOB_NAME_LABEL) or labels.get("job-name")


def container_state(pod: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The runner container's state: ``{"waiting"|"running"|"terminated": {...}}`` or ``{}``."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0].get("state") or {}


def pod_over(pod: Optional[Mapping[str, Any]]) -> bool:
    """Whether the pod's runner can no longer report: gone, finished, or on a lost node."""
    if pod is None:
        return True
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") or "terminated" in container_state(pod) or \
        condition(pod, "DisruptionTarget") is not None


def pod_finished(pod: Optional[Mapping[str, Any]]) -> bool:
    """Whether the pod's runner ended by itself, which says alone how its Job ends (``backoffLimit``
    0, ``restartPolicy: Never``): its phase is Succeeded or Failed, and nobody deleted or disrupted it
    (then the Job's own status says why: suspended by Kueue, past its deadline, evicted)."""
    if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp") or condition(pod, "DisruptionTarget"):
        return False
    status = pod.get("status") or {}
    return status.get("phase") in ("Succeeded", "Failed") and status.get("reason") != "Evicted"


def exit_code(pod: Optional[Mapping[str, Any]]) -> Optional[int]:
    """The runner container's exit code, when it has one."""
    return (container_state(pod).get("terminated") or {}).get("exitCode")


def job_started_at(job: Optional[Mapping[str, Any]]) -> Optional[float]:
    """When the Job last started (``status.startTime``: set again when a suspended Job resumes)."""
    return _timestamp(((job or {}).get("status") or {}).get("startTime"))


def _timestamp(value: Optional[str]) -> Optional[float]:
    """An API timestamp (``2026-01-02T03:04:05Z``) as UNIX time; None for none."""
    try:
        return datetime.fromisoformat(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


def scheduled_at(pod: Optional[Mapping[str, Any]]) -> Optional[float]:
    """When the pod was bound to a node (its GPUs with it), if it has been."""
    scheduled = condition(pod, "PodScheduled")
    if scheduled is None:
        return None
    try:
        return datetime.fromisoformat(scheduled["lastTransitionTime"]).timestamp()
    except (KeyError, TypeError, ValueError):  # a condition without its time: it is news now
        return time.time()


def pod_index(pod: Optional[Mapping[str, Any]]) -> int:
    """The index of a pod of an Indexed Job (0 for any other pod)."""
    meta = (pod or {}).get("metadata") or {}
    value = (meta.get("annotations") or {}).get(INDEX_ANNOTATION) or (meta.get("labels") or {}).get(INDEX_ANNOTATION)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def pod_failed(pod: Optional[Mapping[str, Any]]) -> bool:
    """Whether a learner's pod failed: its runner exited non-zero, or it was evicted or disrupted."""
    if pod is None:
        return False
    code = exit_code(pod)
    return (pod.get("status") or {}).get("phase") == "Failed" or (code is not None and code != 0) or \
        condition(pod, "DisruptionTarget") is not None


def learner_failure(pod: Mapping[str, Any]) -> str:
    """Why a learner's pod failed, naming the learner (index + 1)."""
    code = exit_code(pod)
    why = failure_reason(None, pod)
    if why is None or why.startswith("the run's Job or pod was deleted"):
        why = f"the command exited with code {code}" if code is not None else "its pod failed"
    return f"learner {pod_index(pod) + 1}: {why}"


def stuck_reason(pod: Optional[Mapping[str, Any]], secret: Optional[str] = None) -> Optional[str]:
    """Why the runner container cannot start (image pull, container config), if so. The run's own
    ``secret`` not readable yet is a wait, not a reason: the kubelet tries again, and reads it."""
    waiting = container_state(pod).get("waiting") or {}
    reason, message = waiting.get("reason"), waiting.get("message") or ""
    if reason in IMAGE_PULL_ERRORS:
        image = pod["spec"]["containers"][0]["image"]
        return f"cannot pull image {image} ({reason}): {message}".rstrip(": ")
    if reason in CONTAINER_ERRORS and not (secret and _not_readable_yet(secret, message)):
        return f"cannot start the runner container ({reason}): {message}".rstrip(": ")
    return None


def _not_readable_yet(secret: str, message: str) -> bool:
    """Whether the kubelet's ``message`` says the run's own Secret is not there yet (it is made just
    after the Job) or its node may not read it yet: the Node authorizer learns that a pod was bound
    to a node a moment after the binding, and a kubelet that asks first is refused."""
    own = rf'secrets? "{re.escape(secret)}"'
    return bool(re.search(rf"{own} not found", message) or
                re.search(rf"{own} is forbidden: .*no relationship found between node", message))


def waiting_note(job: Mapping[str, Any], pod: Optional[Mapping[str, Any]],
                 create_error: Optional[str] = None) -> Optional[str]:
    """Why a started run is still waiting for a node: Kueue's queue, the API's refusal to create
    its pod (a quota), or the scheduler's words."""
    if suspended(job):
        queue = job["metadata"].get("labels", {}).get(KUEUE_LABEL, "?")
        return f"waiting for Kueue to admit it (LocalQueue {queue})"
    if pod is None and create_error:
        return f"waiting for its pod to be created: {_created_words(create_error)}"
    for cond in ((pod or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
            what = "free GPUs" if f"Insufficient {GPU_RESOURCE}" in cond.get("message", "") else "a node"
            return f"waiting for {what}: {cond.get('message', '')}".rstrip(": ")
    return None


def suspended(job: Optional[Mapping[str, Any]]) -> bool:
    """Whether the Job waits suspended (for Kueue to admit it)."""
    return bool(((job or {}).get("spec") or {}).get("suspend"))


def create_failure(create_error: Optional[str]) -> Optional[str]:
    """The run's reason when the API refused its pod for good (a FailedCreate event's message:
    Pod Security, a LimitRange...); None for none, or for a refusal a later try may not meet."""
    if not create_error or any(words in create_error for words in TRANSIENT_CREATE_ERRORS):
        return None
    return f"cannot create the run's pod: {_created_words(create_error)}"


def _created_words(create_error: str) -> str:
    """A FailedCreate message without the Job controller's ``Error creating:`` prefix."""
    return create_error.removeprefix("Error creating:").strip()


def deadline_reason(job: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The run's reason once its Job ran past ``activeDeadlineSeconds`` (the Job controller says so
    with FailureTarget as it starts stopping the pods, then Failed), else None."""
    ended = condition(job, "FailureTarget") or condition(job, "Failed")
    if ended and ended.get("reason") == "DeadlineExceeded":
        return f"timed out after {job['spec'].get('activeDeadlineSeconds')} s (activeDeadlineSeconds)"
    return None


def failure_reason(job: Optional[Mapping[str, Any]], pod: Optional[Mapping[str, Any]]) -> Optional[str]:
    """Why Kubernetes ended a run, in words a user can act on; None when the runner just exited."""
    terminated = container_state(pod).get("terminated") or {}
    if terminated.get("reason") == "OOMKilled":
        limit = pod["spec"]["containers"][0].get("resources", {}).get("limits", {}).get("memory")
        return "out of memory: raise memory" + (f" (the limit was {limit})" if limit else "")
    timed_out = deadline_reason(job)
    if timed_out:  # however its pods were then stopped
        return timed_out
    status = (pod or {}).get("status") or {}
    if status.get("reason") == "Evicted":
        return f"evicted from its node: {status.get('message', '')}".rstrip(": ")
    disrupted = condition(pod, "DisruptionTarget")
    if disrupted:
        return DISRUPTIONS.get(disrupted.get("reason"), f"disrupted ({disrupted.get('reason')})")
    if pod is None or not terminated:
        return "the run's Job or pod was deleted before the runner ended"
    return None


def disruption_reason(job: Optional[Mapping[str, Any]], pod: Optional[Mapping[str, Any]],
                      kueue_stop: Optional[str] = None) -> Optional[str]:
    """Why the cluster stopped a run's pod for a reason of its own, which the backend did not ask
    for: its DisruptionTarget condition (the eviction API of a node drain, a lost node...), Kueue
    suspending its admitted Job again (``kueue_stop``: Kueue's event, which says whose workload
    preempted it), or its deletion (a ``deletionTimestamp``) by someone; None for none (or for a
    time limit: that is a failure). The backend ignores it when it had asked the run to stop itself."""
    if deadline_reason(job):
        return None
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    on = f" from node {node}" if node else ""
    disrupted = condition(pod, "DisruptionTarget")
    if disrupted and disrupted.get("reason") == "EvictionByEvictionAPI":
        return f"evicted{on} (the eviction API: a node drain)"
    if disrupted:
        return DISRUPTIONS.get(disrupted.get("reason"), f"disrupted ({disrupted.get('reason')})") + \
            (f" (node {node})" if node else "")
    if suspended(job):
        return kueue_preemption(kueue_stop)
    if ((pod or {}).get("status") or {}).get("reason") == "Evicted":
        return f"evicted{on}: {pod['status'].get('message', '')}".rstrip(": ")
    if ((pod or {}).get("metadata") or {}).get("deletionTimestamp"):
        return f"its pod was deleted{on} (not by the backend)"
    return None


def kueue_preemption(message: Optional[str]) -> str:
    """Kueue's reason for suspending an admitted Job, in a user's words: which workload it gave
    the run's quota to and why, when its event says so, else what it says."""
    found = re.search(r"Preempted to accommodate a workload \(UID: ([^,]+), JobUID: [^)]*\) due to ([^;]+)"
                      r"(?:; preemptor path: ([^;\s]+))?", message or "")
    if found:
        uid, why, path = found.groups()
        return f"Kueue gave its GPUs to workload {uid}" + (f" of {path}" if path else "") + f" ({why.strip()})"
    if message:
        return f"its Job was suspended by Kueue: {message}"
    return "its Job was suspended by Kueue (preempted by a higher-priority workload, or its queue's quota shrank)"
