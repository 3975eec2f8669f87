"""The Kubernetes objects an experiment's runs would create, without submitting it.

The experiment is built as the backend builds it (``submit.build_experiment``: manifest, code,
sweep; offline: the data store is left alone) and each run's first attempt as the Kubernetes executor starts it
(``k8s_objects.run_objects``), with the operator's ``WML_K8S_*`` settings from the environment.
No backend or cluster is contacted and no run is stored. Secret values (the runner's token, the
store's credentials) never appear: the Secret keeps its keys, each valued ``REDACTED``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from wml_backend.executors.k8s_objects import fresh_name, run_objects
from wml_core.definition import Definition
from wml_backend.executors.k8s_options import K8sOptions, load_options, with_store
from wml_core.errors import InvalidInput
from wml_backend.lifecycle import launch_of, store_credentials
from wml_core.models import ExperimentRequest
from wml_backend.service import ADMIN_ACCOUNT
from wml_backend.settings import Settings
from wml_backend.rundb import Account, RunRow
from wml_backend.submit import build_experiment

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
    if store_refusal(settings, env) is None:
        options = with_store(options, settings.store_config)
    account = Account(name=ADMIN_ACCOUNT, gpu_quota=UNLIMITED_GPUS)
    new = build_experiment(account, request, settings, offline=True)
    runner_env = {"WML_RUNNER_TOKEN": REDACTED, "WML_BACKEND_URL": settings.url,
                  **store_credentials(new.secret, settings.store_config, settings.operator_store_keys)}
    return [_planned(run, new.experiment.definition, runner_env, options) for run in new.runs]


def store_refusal(settings: Settings, env: Mapping[str, str] = os.environ) -> Optional[str]:
    """Why a backend with these settings would refuse to run Jobs (the embedded file store with no
    claim), or None: the plan is still printed, as the objects would be once that is fixed."""
    try:
        with_store(load_options(env, K8sOptions().namespace, settings.public_url), settings.store_config)
    except InvalidInput as exc:
        return str(exc)
    return None


def redacted(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj``, a Secret's values (``data``, ``stringData``) replaced by ``REDACTED``, keys kept."""
    if obj.get("kind") != "Secret":
        return dict(obj)
    hidden = {part: dict.fromkeys(obj[part], REDACTED) for part in ("data", "stringData") if obj.get(part)}
    return {**obj, **hidden}


def _planned(run: RunRow, definition: Definition, runner_env: Mapping[str, str],
             options: K8sOptions) -> PlannedRun:
    launch = launch_of(run, definition, (), {"WML_RUN_ID": run.id, **runner_env})
    objects = run_objects(launch, options, fresh_name(launch))
    return PlannedRun(run.id, run.hparams, [redacted(obj) for obj in objects])


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m wml_backend.dry_run [--storage URL --endpoint URL] < request.json``: the plan
    of the experiment request on stdin, as one YAML stream with a comment before each run."""
    import yaml

    p = argparse.ArgumentParser(prog="wml-backend dry-run")
    p.add_argument("--storage")
    p.add_argument("--endpoint")
    args = p.parse_args(argv)
    given = {"storage_url": args.storage, "endpoint": args.endpoint}
    settings = Settings(**{k: v for k, v in given.items() if v})
    try:
        request = ExperimentRequest.model_validate_json(sys.stdin.read())
        plan = kubernetes_plan(request, settings)
    except InvalidInput as exc:
        print(f"wml-backend: {exc}", file=sys.stderr)
        sys.exit(2)
    refusal = store_refusal(settings)
    if refusal:  # the plan is still printed: what runs would create once the store is fixed
        print(f"# warning: {refusal}")
    for run in plan:
        print(f"# run {run.run_id}: hyperparameters {json.dumps(run.hparams, sort_keys=True, default=str)}")
        sys.stdout.write(yaml.safe_dump_all(run.objects, explicit_start=True, sort_keys=False))


if __name__ == "__main__":
    main()
