"""The names a run's Kubernetes objects carry: our labels, the cluster's, and valid values for them.

Everything that writes a run's objects (``k8s_objects``, ``k8s_kueue``) and everything that reads
them back (``k8s_status``, the watches) agrees through these names. ``label_value`` and
``dns_label`` turn any text (an account, a run id) into a value Kubernetes accepts.
"""

from __future__ import annotations

import hashlib
import re

#: Labels every object of a run carries; the executor watches what matches ``SELECTOR``.
MANAGED_BY = {"app.kubernetes.io/managed-by": "wml-backend", "app.kubernetes.io/name": "wml-run"}
SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
ACCOUNT_LABEL, EXPERIMENT_LABEL, RUN_LABEL = "wml.dev/account", "wml.dev/experiment", "wml.dev/run"
ATTEMPT_LABEL = "wml.dev/attempt"
#: The label Kueue reads to put a Job in a LocalQueue.
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
#: The annotation (and label) Kubernetes sets on each pod of an Indexed Job: its index.
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
#: The label the Job controller puts on its pods (the headless Service selects by it).
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """``text`` as a valid label value: unchanged when valid, else cleaned and suffixed by a hash."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:54].strip("-_.")
    return f"{clean}-{digest}" if clean else digest


def dns_label(text: str) -> str:
    """``text`` as a DNS-1123 label (object names, queue names): lower case, ``-``, ≤ 63."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if clean == text and len(clean) <= 63:
        return clean
    return f"{clean[:54].strip('-')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}".lstrip("-")
