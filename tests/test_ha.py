"""Three backend replicas on one PostgreSQL behind one address (``ha_cluster``): one administrator,
one leader, the API and the event stream on every replica, and the fault test (``ha_campaign``):
the leader killed twice and a follower once during a 20-run sweep (``bench/ha.py``: the long one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from pgserver import postgres_server  # noqa: F401 (fixture)

from backend_process import free_port
from ha_campaign import campaign, check, freeze_leader, summary, write_sweep
from ha_cluster import Cluster


@pytest.fixture(scope="module")
def database(postgres_server):  # noqa: F811
    """One database for the module's replicas."""
    return postgres_server.dsn()


@pytest.fixture(scope="module")
def cluster(database, tmp_path_factory):
    """Three replicas (4 local slots each, JSON logs) on ``database``, behind a balancer."""
    found = Cluster(tmp_path_factory.mktemp("ha"), database, flags=["--log-format", "json"]).start()
    yield found
    found.close()


def _sql(database: str, statement: str, *args) -> list[tuple]:
    import psycopg
    with psycopg.connect(database, autocommit=True) as conn:
        cursor = conn.execute(statement, args)
        return cursor.fetchall() if cursor.description else []


def test_the_first_replica_creates_the_administrator_and_the_others_serve_its_token(cluster, database):
    homes = [r.home / "backend" / "token" for r in cluster.replicas]
    assert [home.exists() for home in homes] == [True, False, False]
    assert _sql(database, "SELECT name, admin FROM accounts") == [("local", 1)]
    for replica in cluster.replicas:
        usage = httpx.get(f"{replica.url}/v1/usage", headers={"Authorization": f"Bearer {cluster.token}"})
        assert usage.status_code == 200


def test_status_shows_the_replicas_and_the_leader(cluster):
    replica = cluster.replicas[1]
    info = replica.cli_json("backend", "status")
    assert [r["url"] for r in info["replicas"]] == [r.url for r in cluster.replicas]
    assert sum(r["leader"] for r in info["replicas"]) == 1
    assert info["database"].startswith("postgresql://")
    shown = replica.cli("backend", "status", check=True).stdout
    assert "replicas of postgresql://" in shown and "leader at" in shown and "this one" in shown


def test_metrics_are_for_this_host_or_the_administrator(cluster):
    url = f"{cluster.replicas[0].url}/metrics"
    text = httpx.get(url).text
    for name in ("wml_runs", "wml_gpus_in_use", "wml_gpu_quota", "wml_queue_length", "wml_queue_oldest_seconds",
                 "wml_admission_seconds", "wml_run_start_seconds", "wml_api_request_seconds",
                 "wml_event_subscribers", "wml_executor_errors_total", "wml_leader"):
        assert f"# TYPE {name}" in text or f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'wml_gpu_quota{account="local"} 4.0' in text
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert httpx.get(url, headers=proxied).status_code == 401
    bob = cluster.replicas[0].cli("accounts", "create", "bob", "--gpus", "1", token=cluster.token, check=True)
    bob_token = bob.stdout.strip().splitlines()[-1]
    assert httpx.get(url, headers={**proxied, "Authorization": f"Bearer {bob_token}"}).status_code == 403
    assert httpx.get(url, headers={**proxied, "Authorization": f"Bearer {cluster.token}"}).status_code == 200


def test_an_event_stream_refuses_an_id_it_did_not_send(cluster):
    headers = {"Authorization": f"Bearer {cluster.token}", "Last-Event-ID": "yesterday"}
    refused = httpx.get(f"{cluster.replicas[2].url}/v1/events", headers=headers)
    assert refused.status_code == 422
    assert refused.json()["message"] == "Last-Event-ID: 'yesterday' is not an id this stream sent"


def test_a_run_submitted_through_a_follower_is_admitted_at_once(cluster, tmp_path):
    leader = cluster.wait_leader()
    follower = cluster.replicas[(leader + 1) % len(cluster.replicas)]
    manifest, model = write_sweep(tmp_path, runs=1, steps=1, sleep=0.0)
    headers = {"Authorization": f"Bearer {cluster.token}"}
    experiment = follower.client(cluster.token).train(str(manifest), str(model))
    submitted = time.monotonic()
    while time.monotonic() - submitted < 10:
        runs = httpx.get(f"{follower.url}/v1/runs", params={"experiment": experiment.id}, headers=headers).json()
        if runs[0]["state"] != "QUEUED":
            break
        time.sleep(0.05)
    assert time.monotonic() - submitted < 1.5, "the leader did not admit a run queued on a follower promptly"


def test_leader_killed_twice_and_a_follower_once_during_a_20_run_sweep(cluster, tmp_path):
    """Every run ends once, runs once (one PROCESSING, one start of its command), is billed once;
    every event stream gets every state change of every run in order, within a second, whether
    its replica lived throughout or it reconnected to another with Last-Event-ID."""
    manifest, model = write_sweep(tmp_path, runs=20, steps=4, sleep=0.4)
    found = campaign(cluster, manifest, model, leader_kills=2, gap_s=3.0)
    seen = check(cluster, found)
    print(f"takeovers: {summary(found.takeovers)}; event latency: {summary(seen['latencies'])}")
    assert max(found.takeovers) < 10
    assert any(len(r.replicas_used) == 1 for r in found.recorders), "no stream lived through the campaign"
    assert any(len(r.replicas_used) > 1 for r in found.recorders), "no stream had to reconnect"
    latencies = sorted(seen["latencies"])
    assert latencies[int(len(latencies) * 0.95)] < 1.0, f"events reached clients late: {summary(latencies)}"


def test_json_logs_carry_the_run_and_experiment_ids(cluster):
    # Every line is JSON: nothing else (a runner's start, say) writes to the log.
    lines = [line for r in cluster.replicas for line in (r.home / "backend-test.log").read_text().splitlines()]
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    about_runs = [r for r in records if "run_id" in r]
    assert about_runs and all(r["run_id"].startswith(r["experiment_id"]) for r in about_runs)


def test_a_frozen_leader_is_replaced_within_the_lease_and_steps_down_when_it_wakes(cluster):
    leader = cluster.wait_leader()
    assert freeze_leader(cluster) < 10
    deadline = time.monotonic() + 5
    while httpx.get(f"{cluster.replicas[leader].url}/healthz", timeout=5).json()["leader"]:
        assert time.monotonic() < deadline, "the old leader did not step down"
        time.sleep(0.1)
    assert sum(r["leader"] for r in httpx.get(f"{cluster.replicas[leader].url}/v1/replicas").json()) == 1


def test_a_replica_older_than_the_database_refuses_to_start_in_one_line(cluster, database, tmp_path):
    (version,), = _sql(database, "SELECT version FROM schema_version")
    _sql(database, "UPDATE schema_version SET version=%s", version + 1)
    try:
        done = subprocess.run([sys.executable, "-m", "wml_backend.daemon", "serve", "--port", str(free_port()),
                               "--database", database], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "WML_HOME": str(tmp_path / "old")})
    finally:
        _sql(database, "UPDATE schema_version SET version=%s", version)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"wml-backend: the database's schema is version {version + 1}, newer than this backend's {version}: "
        "upgrade this backend to the version that wrote it"]
