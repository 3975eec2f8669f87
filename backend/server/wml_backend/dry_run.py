"""The Kubernetes objects an experiment's runs would create, without submitting it.

The experiment is built as the backend builds it (``submit.build_experiment``: manifest, code,
sweep; offline: the data store is left alone) and each run's first attempt as the Kubernetes executor starts it
(``k8s_objects.run_objects``), with the operator's ``WML_K8S_*`` settings from the environment.
No backend or cluster is contacted and no run is stored. Secret values (the runner's token, the
store's credentials) never appear: the Secret keeps its keys, each valued ``REDACTED``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .executors.k8s_objects import fresh_name, run_objects
from .executors.k8s_options import K8sOptions, load_options
from .lifecycle import launch_of, store_credentials
from .models import ExperimentRequest
from .service import ADMIN_ACCOUNT
from .settings import Settings
from .store import Account, RunRow
from .submit import build_experiment

#: What a secret value is shown as.
REDACTED = "<redacted>"
#: The dry run's GPU quota: quotas are the backend's to enforce, per account, at submission.
UNLIMITED_GPUS = 1 << 30


@dataclass(frozen=True)
class PlannedRun:
    """One run of the experiment: its id, its hyperparameters, and what starting it creates."""

    run_id: str
    hparams: dict[str, Any]
    objects: list[dict[str, Any]]


def kubernetes_plan(request: ExperimentRequest, settings: Optional[Settings] = None,
                    env: Mapping[str, str] = os.environ) -> list[PlannedRun]:
    """The Secret, Job and (for several learners) headless Service each run of ``request`` would
    create in the cluster, secrets redacted; ``InvalidInput`` for a bad request or setting.

    ``settings`` are the backend's (default store, public URL; default: from the environment),
    ``env`` holds the ``WML_K8S_*`` settings (the namespace is ``WML_K8S_NAMESPACE`` or ``default``).
    """
    settings = settings or Settings()
    options = load_options(env, K8sOptions().namespace, settings.public_url)
    account = Account(name=ADMIN_ACCOUNT, gpu_quota=UNLIMITED_GPUS)
    new = build_experiment(account, request, settings.store_config, settings.default_results, offline=True)
    runner_env = {"WML_RUNNER_TOKEN": REDACTED, "WML_BACKEND_URL": settings.url,
                  **store_credentials(new.secret, settings.store_config)}
    return [_planned(run, new.experiment.definition, runner_env, options) for run in new.runs]


def redacted(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj``, a Secret's values (``data``, ``stringData``) replaced by ``REDACTED``, keys kept."""
    if obj.get("kind") != "Secret":
        return dict(obj)
    hidden = {part: dict.fromkeys(obj[part], REDACTED) for part in ("data", "stringData") if obj.get(part)}
    return {**obj, **hidden}


def _planned(run: RunRow, definition: Mapping[str, Any], runner_env: Mapping[str, str],
             options: K8sOptions) -> PlannedRun:
    launch = launch_of(run, definition, (), {"WML_RUN_ID": run.id, **runner_env})
    objects = run_objects(launch, options, fresh_name(launch))
    return PlannedRun(run.id, run.hparams, [redacted(obj) for obj in objects])
