"""Store credentials reach a pod only through its run's Secret, never through the Job spec.

The backend's default store is S3 (a moto server that checks signatures and IAM policies) and
its credentials are in the backend's environment only. The stand-in's containers get nothing
of the host but their image's ENV and the pod's env, so the run can store its results only if
the credentials came with the pod, from the per-run Secret.
"""

from __future__ import annotations

import base64
import json

from kubefake import start_fake_kube, stop_fake_kube
from s3server import running_moto
from test_cli_e2e import definition, submit
from test_k8s_backend import ClusterBackend, wait_run

ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def test_store_credentials_come_from_the_run_secret(tmp_path):
    with running_moto() as moto:
        key, secret = moto.user("operator", ALLOW_ALL)
        kube = start_fake_kube(tmp_path / "kube")
        backend = ClusterBackend(tmp_path / "home", gpus=2, extra_env={
            "KUBECONFIG": str(kube.kubeconfig), "WML_STORAGE": "s3://k8s-results", "AWS_ENDPOINT_URL": moto.endpoint,
            "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"})
        backend.start()
        try:
            with moto.iam_checks():
                run_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.3], "steps": [2]})) + "-01"
                run = wait_run(backend, run_id, timeout=60)
            assert run["state"] == "COMPLETED", run
            stored = moto.client().list_objects_v2(Bucket="k8s-results", Prefix=f"training-{run_id}/")
            assert any(o["Key"].endswith("started.txt") for o in stored["Contents"])
            created = {res: json.dumps(obj) for _, res, kind, obj in kube.server.store.history if kind == "ADDED"}
            assert base64.b64encode(key.encode()).decode() in created["secrets"]
            assert key not in created["jobs"] and secret not in created["jobs"]
        finally:
            backend.close()
            stop_fake_kube(kube)

