"""Training code against its runner, its backend and other accounts' runs on the Kubernetes
executor (issue #13, items 1 and 2), through a real backend on the test cluster.

The backend runs as the ServiceAccount of ``backend/deploy`` with secrets planted in its
environment; its run pods are admitted as it renders them (Pod Security ``restricted``: user
10001, no capability, no privilege escalation) and the test cluster's node agent runs them as a
container runtime would for processes (``tests/k8s/nodeagent/security.py``): that user, no
capabilities, ``no_new_privs``, a PID namespace whose PID 1 is the runner, and of this host's
disk only the pod's own folder and the interpreter. The attacker is the training code of
``test_run_isolation`` (imported, not copied): it reads every process's environment and memory
it can open and the backend's files, then forges state reports with guessed tokens; the test
steals tokens as root to try what a leaked one could do. The tests assert that every attempt
failed and that nothing planted (the backend's secret, the administrator's token, the operator's
and another account's S3 keys, that account's data) is in any run's log or output.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from s3server import ALLOW_ALL_S3, running_moto
from test_run_isolation import ATTACK, FLAKY, TOKEN_LIKE, VICTIM, outputs, report, show, stored, submit_code, \
    token_in_memory
from wml_backend.tokens import token_hash

sys.path.insert(0, str(Path(__file__).parents[1] / "k8s"))  # the test cluster's helpers live beside its tests
from test_k8s_backend import BUCKET, IMAGES, ClusterBackend  # noqa: E402
from testcluster import backend_namespace, shared_cluster  # noqa: E402

pytestmark = [pytest.mark.k8s, pytest.mark.nodeagent]
#: A secret planted in the backend's environment: no run output may hold it.
PLANTED = f"planted-{secrets.token_hex(16)}"

#: Appended to the attack: state reports with guessed tokens; the answers go to forged.json.
FORGE = r'''
import urllib.error, urllib.request


def status(request):
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except Exception as exc:
        return type(exc).__name__


def forge(run_id, token):
    return status(urllib.request.Request(f"{hp['backend']}/v1/runner/{run_id}/state", method="POST",
                                         data=json.dumps({"state": "COMPLETED"}).encode(),
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"}))


forged = {"own run, guessed token": forge(os.environ["TRAINING_ID"], "x" * 32),
          "ann's run, guessed token": forge(hp["victim_run"], "y" * 32)}
(Path(os.environ["RESULT_DIR"]) / "forged.json").write_text(json.dumps(forged))
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A backend on the test cluster with ``PLANTED`` in its environment, its default store on S3
    (moto); ``ann`` holds a store key of her own."""
    if os.geteuid() != 0:
        pytest.skip("the node agent runs pods as their own users only as root")
    with running_moto() as s3, backend_namespace(shared_cluster(), tmp_path_factory.mktemp("kube")) as ns:
        operator = s3.user("operator", ALLOW_ALL_S3)
        ann_key = s3.user("ann", {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::ann-*", "arn:aws:s3:::ann-*/*"]}]})
        for bucket in (BUCKET, "ann-data", "ann-results"):
            s3.client().create_bucket(Bucket=bucket)
        backend = ClusterBackend(tmp_path_factory.mktemp("k8s-attacks") / "wml-home", ns, s3, operator, gpus=4,
                                 extra_env={"WML_PLANTED_SECRET": PLANTED, "WML_K8S_IMAGE_MAP": json.dumps(IMAGES)})
        (backend.home / "backend").mkdir(mode=0o700, parents=True)
        backend.restart(timeout=180)  # serve in the foreground: a loaded host may take over 30 s
        backend.env["WML_TOKEN"] = backend.token
        backend.framework = "custom"  # submit_code's framework: the runner image of IMAGES
        try:
            yield SimpleNamespace(backend=backend, ns=ns, s3=s3, operator=operator, ann_key=ann_key)
        finally:
            backend.close()
        refused = ns.refused()
    assert not refused, f"backend/deploy/rbac.yaml lacks what the backend asked for: {refused}"


def account(cluster, name: str) -> str:
    """A new account ``name``'s token."""
    created = cluster.backend.cli("accounts", "create", f"{name}{secrets.token_hex(2)}", "--gpus", "1", check=True)
    return created.stdout.strip().splitlines()[-1]


def ann_store(cluster) -> list[dict]:
    """Ann's own store, with her own key (which only her runs may hold)."""
    key, secret = cluster.ann_key
    connection = {"auth_url": cluster.s3.endpoint, "user_name": key, "password": secret, "region": "us-east-1"}
    return [{"id": "ann", "type": "s3_datastore", "training_data": {"container": "ann-data"},
             "training_results": {"container": "ann-results"}, "connection": connection}]


def runner_pid(run_id: str) -> int:
    """The host process of a run's live runner (read as root: its environment names the run)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"wml_runner"] \
                    and f"WML_RUN_ID={run_id}\0".encode() in (entry / "environ").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no runner of {run_id} runs")


def stolen(cluster, run_id: str) -> str:
    """The run's runner token, read as root from its runner's memory (what no run can do)."""
    return token_in_memory(runner_pid(run_id), stored(cluster.backend, run_id).runner_token_hash, run_id)


def everything_logged(cluster, run_id: str, token: str) -> bytes:
    """All a run's account gets of it (record, log, metrics) and its stored results in S3, every
    container log of the namespace, and the backend's own log."""
    s3, prefix = cluster.s3.client(), f"training-{run_id}/"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    stored_results = b"".join(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed)
    logs = b"".join(p.read_bytes() for p in (cluster.ns.cluster.state / "agent" / "pods").glob(
        f"{cluster.ns.name}_*/logs/*.log"))
    return outputs(cluster.backend, run_id, token) + stored_results + logs + \
        (cluster.backend.home / "backend" / "backend.log").read_bytes()


def test_training_code_reads_no_credential_and_forges_nothing_on_kubernetes(cluster, tmp_path):
    backend = cluster.backend
    ann, bo = account(cluster, "ann"), account(cluster, "bo")
    victim_secret = f"ann-private-{secrets.token_hex(16)}"
    victim = submit_code(backend, tmp_path / "victim", VICTIM, ann, {"secret": victim_secret, "steps": 600},
                         data_stores=ann_store(cluster))
    backend.wait_state(victim, "PROCESSING", token=ann, timeout=120)
    victim_hash = stored(backend, victim).runner_token_hash
    pods = cluster.ns.objects("pods")
    [victim_pod] = [p for p in pods if p["metadata"]["labels"].get("wml.dev/run") == victim]
    meta = victim_pod["metadata"]
    victim_dir = cluster.ns.cluster.state / "agent" / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    attacker = submit_code(backend, tmp_path / "attacker", "import time\ntime.sleep(3)\n" + ATTACK + FORGE, bo, {
        "home": str(backend.home), "victim": str(victim_dir / "volumes" / "work"), "victim_run": victim,
        "backend": backend.url})
    backend.wait_state(attacker, "PROCESSING", token=bo, timeout=120)
    attacker_hash = stored(backend, attacker).runner_token_hash
    backend.wait_state(attacker, "COMPLETED", token=bo, timeout=120)
    assert show(backend, victim, ann)["state"] == "PROCESSING", "a forged report moved ann's run"
    backend.cli("cancel", victim, token=ann, check=True)
    backend.wait_state(victim, "HALTED", token=ann, timeout=120)

    s3 = cluster.s3.client()
    found = json.loads(s3.get_object(Bucket=BUCKET, Key=f"training-{attacker}/attack.json")["Body"].read())
    forged = json.loads(s3.get_object(Bucket=BUCKET, Key=f"training-{attacker}/forged.json")["Body"].read())
    assert found["uid"] == 10001 and found["groups"] == [10001], "the pod's user and fsGroup, nothing else"
    assert not {"WML_RUNNER_TOKEN", "WML_STORE_SECRET_KEY", "WML_PLANTED_SECRET"} & set(found["env"]), found["env"]
    assert not {PLANTED, *cluster.operator, *cluster.ann_key} & set(found["env"].values()), \
        "at most a credential scoped to its own run (#13 item 2), never the operator's or ann's"
    read = {name: text for name, text in found["reads"].items() if not text.startswith("refused: ")}
    assert "/proc/1/environ" not in read and "/proc/1/mem" not in read, "the runner (PID 1) is not dumpable"
    assert set(found["owners"]) >= {"1"} and set(found["owners"].values()) == {10001}, \
        "a PID namespace of its own: only its pod's processes"
    files = {name: text for name, text in read.items() if not name.startswith("/proc/")}
    assert files == {}, f"the backend's files or ann's pod are readable: {files}"
    assert forged == {"own run, guessed token": 401, "ann's run, guessed token": 401}, forged

    leaked = everything_logged(cluster, attacker, bo)
    for secret in (PLANTED, backend.token, ann, bo, victim_secret, cluster.operator[1], cluster.ann_key[1]):
        assert secret.encode() not in leaked
    hashes = {token_hash(t.decode()) for t in TOKEN_LIKE.findall(leaked)}
    assert not {victim_hash, attacker_hash} & hashes, "a runner token is in a log or an output"


def test_an_attempts_token_moves_nothing_once_the_attempt_is_over_on_kubernetes(cluster, tmp_path):
    backend = cluster.backend
    token = account(cluster, "cy")
    run_id = submit_code(backend, tmp_path / "code", FLAKY, token, {"sleep": 15}, max_retries=1)
    backend.wait_state(run_id, "PROCESSING", token=token, timeout=120)
    first = stolen(cluster, run_id)
    deadline = time.monotonic() + 120
    while (run := show(backend, run_id, token))["attempt"] != 2 or run["state"] != "PROCESSING":
        assert time.monotonic() < deadline, f"attempt 2 did not start: {run['state']}"
        time.sleep(0.2)
    second = stolen(cluster, run_id)
    assert report(backend, run_id, first, "STORING").status_code == 401, "attempt 1's token moved attempt 2"
    for state in ("QUEUED", "PENDING"):
        assert report(backend, run_id, second, state).status_code == 409, state
    backend.wait_state(run_id, "COMPLETED", token=token, timeout=120)
    assert report(backend, run_id, first, "FAILED").status_code == 401
    assert show(backend, run_id, token)["state"] == "COMPLETED"
