"""`wml train ... --dry-run=kubernetes` as a user runs it: the YAML of the objects each run would
create, checked against the official schema, with no backend started or contacted and no secret shown."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
from pathlib import Path

import yaml
from backend_process import REPO, BackendProcess
from test_cli_e2e import TINY, definition
from test_k8s_objects import valid

DDP = Path(__file__).parents[1] / "definitions" / "ddp"
PLANTED_KEY_ID, PLANTED_SECRET = "AKIA-PLANTED-ID-0c41", "PLANTED-s3cr3t-d7e2a9"
#: The comment that precedes each run's objects.
HEADER = re.compile(r"^# run (\S+): hyperparameters (.*)$", re.MULTILINE)


def dry_run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``wml train ARGS --dry-run=kubernetes`` with its own $WML_HOME and no WML_/AWS_/KUBECONFIG
    of this machine, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WML_", "AWS_", "KUBECONFIG"))}
    environ.update(WML_HOME=str(home), **env)
    return subprocess.run(BackendProcess.cli_args("train", *args, "--dry-run=kubernetes"), env=environ,
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def printed(result: subprocess.CompletedProcess) -> tuple[list[tuple[str, dict]], list[dict]]:
    """The runs' (id, hyperparameters) headers and the objects of a successful dry run, each valid."""
    assert result.returncode == 0, result.stderr
    headers = [(run_id, yaml.safe_load(hparams)) for run_id, hparams in HEADER.findall(result.stdout)]
    return headers, [valid(obj) for obj in yaml.safe_load_all(result.stdout)]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def test_a_sweep_prints_a_secret_and_a_job_per_run_and_starts_no_backend(tmp_path):
    home = tmp_path / "home"
    manifest = definition(tmp_path, gpus=2, cpus=3, memory="6Gi", hyperparameters={})
    headers, objects = printed(dry_run(home, str(manifest), str(TINY), "--sweep", "lr=[0.01,0.02,0.03]"))
    jobs, secrets = of_kind(objects, "Job"), of_kind(objects, "Secret")
    assert len(jobs) == len(secrets) == 3 and len(objects) == 6
    assert sorted(h["lr"] for _, h in headers) == [0.01, 0.02, 0.03]
    assert [o["kind"] for o in objects] == ["Job", "Secret"] * 3  # each run's Job, then its Secret
    for (run_id, _), secret, job in zip(headers, secrets, jobs):
        name = job["metadata"]["name"]
        assert secret["metadata"]["name"] == name and name.startswith(f"wml-{run_id}-a1-")
        assert job["metadata"]["labels"]["wml.dev/run"] == run_id and job["metadata"]["namespace"] == "default"
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"] == {"cpu": "3", "ephemeral-storage": "20Gi", "memory": "6Gi",
                                                    "nvidia.com/gpu": "2"}
        assert {"name": "WML_RUN_ID", "value": run_id} in container["env"]
        assert {"name": "WML_BACKEND_URL", "value": "http://wml-backend.default.svc:8642"} in container["env"]
        assert container["envFrom"] == [{"secretRef": {"name": name}}]
        assert secret["stringData"] == {"WML_RUNNER_TOKEN": "<redacted>"}
    assert not (home / "backend").exists(), "a dry run started (or prepared) a backend"
    assert not (home / "storage").exists(), "a dry run touched the data store"


def test_the_embedded_file_store_is_a_warning_until_a_claim_holds_it(tmp_path):
    home = tmp_path / "home"
    refused = dry_run(home, str(TINY / "manifest.yml"), str(TINY))
    assert refused.stdout.startswith("# warning: kubernetes: the embedded file store (") and \
        "set WML_K8S_STORE_PVC" in refused.stdout.splitlines()[0]
    printed(refused)  # the objects are still printed, as they would be once the store is fixed
    claimed = dry_run(home, str(TINY / "manifest.yml"), str(TINY), WML_K8S_STORE_PVC="wml-store")
    _, objects = printed(claimed)
    assert "# warning" not in claimed.stdout
    for job in of_kind(objects, "Job"):
        pod = job["spec"]["template"]["spec"]
        assert {"name": "claim-0", "persistentVolumeClaim": {"claimName": "wml-store"}} in pod["volumes"]
        assert {"name": "claim-0", "mountPath": str(home / "storage")} in pod["containers"][0]["volumeMounts"]


def test_learners_print_an_indexed_job_and_a_headless_service_in_the_configured_namespace(tmp_path):
    with socket.socket() as listener:  # a configured backend that must not be contacted
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        backend = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = dry_run(tmp_path / "home", str(DDP / "manifest.yml"), WML_BACKEND=backend,
                         WML_K8S_NAMESPACE="ml-team")
        listener.setblocking(False)
        try:
            listener.accept()
            raise AssertionError("the dry run contacted the backend")
        except BlockingIOError:
            pass
    headers, objects = printed(result)
    assert [obj["kind"] for obj in objects] == ["Job", "Secret", "Service", "NetworkPolicy"] and len(headers) == 1
    job, service = objects[0], objects[2]
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 2, 2)
    name = job["metadata"]["name"]
    assert service["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"] == name
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert {obj["metadata"]["namespace"] for obj in objects} == {"ml-team"}


def test_store_credentials_are_never_printed_and_the_store_is_left_alone(tmp_path):
    nowhere = "http://127.0.0.1:9"  # nothing listens: a dry run that reached the store would fail
    store = {"WML_STORAGE": "s3://dry-results/team", "AWS_ENDPOINT_URL": nowhere,
             "AWS_ACCESS_KEY_ID": PLANTED_KEY_ID, "AWS_SECRET_ACCESS_KEY": PLANTED_SECRET,
             "AWS_DEFAULT_REGION": "us-east-1"}
    by_default_store = dry_run(tmp_path / "home", str(definition(tmp_path)), str(TINY), **store)
    connection = {"id": "cos", "type": "mount_cos", "training_data": {"container": "ffdl-data"},
                  "connection": {"auth_url": nowhere, "user_name": PLANTED_KEY_ID,
                                 "password": "${PLANTED_SECRET}"}}
    by_manifest = dry_run(tmp_path / "home", str(definition(tmp_path, data_stores=[connection])), str(TINY),
                          PLANTED_SECRET=PLANTED_SECRET)
    # The default store's runs ask for a scoped credential: the operator's keys are not in their Secret.
    for result, names in ((by_default_store, ("WML_RUNNER_TOKEN",)),
                          (by_manifest, ("WML_RUNNER_TOKEN", "WML_STORE_ACCESS_KEY", "WML_STORE_SECRET_KEY"))):
        _, objects = printed(result)
        for secret in of_kind(objects, "Secret"):
            assert secret["stringData"] == dict.fromkeys(names, "<redacted>")
        for planted in (PLANTED_KEY_ID, PLANTED_SECRET):
            for shown in (planted, base64.b64encode(planted.encode()).decode()):
                assert shown not in result.stdout and shown not in result.stderr


def test_a_bad_manifest_is_one_located_line_and_exit_2(tmp_path):
    bad = tmp_path / "manifest.yml"
    bad.write_text("name: bad\ngpus: -1\nframework:\n  name: pytorch\n  command: python3 train.py\n")
    result = dry_run(tmp_path / "home", str(bad), str(TINY))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"{bad}:2: gpus:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    unknown = dry_run(tmp_path / "home", str(TINY / "manifest.yml"), WML_K8S_NAMESPACES="typo")
    assert unknown.returncode == 2 and unknown.stderr.startswith("wml: WML_K8S_NAMESPACES: unknown setting")
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """``wml train ... --dry-run=kubernetes | head`` ended in a BrokenPipeError traceback."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("WML_", "AWS_", "KUBECONFIG"))}
    grid = "lr=[" + ",".join(str(n / 1000) for n in range(1, 101)) + "]"  # 100 runs: more than a pipe holds
    args = BackendProcess.cli_args("train", str(TINY / "manifest.yml"), str(TINY), "--sweep", grid,
                                   "--dry-run=kubernetes")
    environ.update(WML_HOME=str(tmp_path / "home"), WML_K8S_STORE_PVC="x")  # no warning before the first run
    proc = subprocess.Popen(args, env=environ, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"# run ")
    proc.stdout.close()
    assert proc.wait(120) == 141
    assert b"Traceback" not in proc.stderr.read()


def test_the_printed_objects_are_accepted_by_the_api_server(kube_ns, tmp_path):
    """What the dry run prints, a real API server accepts: ``kubectl create --dry-run=server``
    (dryRun=All: admission, Pod Security ``restricted``, strict field validation; warnings are
    errors) as the backend's ServiceAccount, in a namespace made from backend/deploy."""
    store = {"WML_STORAGE": "s3://dry-results", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
             "AWS_DEFAULT_REGION": "us-east-1", "WML_K8S_NAMESPACE": kube_ns.name}
    sweep = (str(definition(tmp_path, gpus=2, cpus=3, memory="6Gi")), str(TINY), "--sweep", "lr=[0.01,0.02]")
    for args in (sweep, (str(DDP / "manifest.yml"), str(DDP))):
        result = dry_run(tmp_path / "home", *args, **store)
        _, objects = printed(result)
        created = kube_ns.cluster.kubectl(
            "--kubeconfig", str(kube_ns.kubeconfig), "create", "--dry-run=server", "--validate=strict",
            "--warnings-as-errors", "-o", "name", "-f", "-", stdin=result.stdout, check=False)
        assert created.returncode == 0, created.stderr
        accepted = sorted(line.split("/")[1] for line in created.stdout.split())
        assert accepted == sorted(obj["metadata"]["name"] for obj in objects)
    assert kube_ns.objects("jobs") == kube_ns.objects("secrets") == [], "a dry run creates nothing"
