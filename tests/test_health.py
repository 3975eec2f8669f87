"""What a load balancer and Kubernetes ask each replica: ``/livez`` (alive: answered while every
worker thread waits on a slow request) and ``/readyz`` (ready: the run store answers, with a schema
this replica knows); and the one-line refusals of a deploy's unfilled templates."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest
from pgserver import DATABASE, postgres_server  # noqa: F401 (fixture)

from backend_process import BackendProcess

#: More requests at once than the API server has worker threads (anyio's default: 40).
MORE_THAN_THE_THREADS = 48
#: Seconds a probe waits for its answer (backend/deploy's liveness probe waits 5).
PROBE_TIMEOUT_S = 2.0


def _sql(url: str, *statements: str) -> None:
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def replica(postgres_server, tmp_path):  # noqa: F811
    backend = BackendProcess(tmp_path / "home", flags=["--database", postgres_server.dsn()]).start()
    yield backend
    backend.close()


def _status(url: str, timeout: float = 2.0) -> int | None:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.TimeoutException:
        return None


def _wait_status(url: str, status: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _status(url) != status:
        assert time.monotonic() < deadline, f"{url} never answered {status}"
        time.sleep(0.2)


def test_alive_while_every_worker_thread_waits_on_the_database(replica, postgres_server):  # noqa: F811
    import psycopg
    assert _status(f"{replica.url}/readyz") == _status(f"{replica.url}/livez") == 200
    headers = {"Authorization": f"Bearer {replica.token}"}
    with psycopg.connect(postgres_server.url(), autocommit=True) as blocker:
        schema = replica.flags[1].rsplit("%3D", 1)[1]
        blocker.execute("BEGIN")
        blocker.execute(f"LOCK TABLE {schema}.runs IN ACCESS EXCLUSIVE MODE")  # every read of runs waits
        answers: list[int] = []
        slow = [threading.Thread(target=lambda: answers.append(
            httpx.get(f"{replica.url}/v1/runs", headers=headers, timeout=60).status_code)) for _ in
            range(MORE_THAN_THE_THREADS)]
        for thread in slow:
            thread.start()
        time.sleep(3.0)
        assert not answers, "the slow requests were not slow"
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as probe:  # made before: a new client takes time to make
            assert [probe.get(f"{replica.url}/livez").status_code for _ in range(3)] == [200] * 3
        assert _status(f"{replica.url}/healthz", timeout=PROBE_TIMEOUT_S) is None  # a route that needs a thread
        assert _status(f"{replica.url}/readyz", timeout=PROBE_TIMEOUT_S) is None  # it cannot serve now: no traffic
        blocker.execute("COMMIT")
    for thread in slow:
        thread.join(timeout=60)
    assert answers == [200] * MORE_THAN_THE_THREADS


def test_not_ready_while_the_database_refuses_it_then_ready_again(replica, postgres_server):  # noqa: F811
    ready = f"{replica.url}/readyz"
    admin = postgres_server.url("postgres")
    _sql(admin, f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS false",
         f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DATABASE}'")
    try:
        _wait_status(ready, 503)
        body = httpx.get(ready, timeout=5).json()
        assert body == {"code": "not_ready", "message": "the run store does not answer"}  # no address, no password
        assert _status(f"{replica.url}/livez") == 200  # alive: nothing to restart
    finally:
        _sql(admin, f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true")
    _wait_status(ready, 200)


def test_not_ready_once_a_newer_version_upgraded_the_schema(replica):
    schema_url = replica.flags[1]
    import psycopg
    with psycopg.connect(schema_url, autocommit=True) as conn:
        (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
        conn.execute("UPDATE schema_version SET version=%s", (version + 1,))
        try:
            answer = httpx.get(f"{replica.url}/readyz", timeout=5)
            assert answer.status_code == 503
            assert answer.json()["message"] == (f"the database's schema is version {version + 1}, "
                                                f"newer than this replica's {version}")
        finally:
            conn.execute("UPDATE schema_version SET version=%s", (version,))
    assert _status(f"{replica.url}/readyz") == 200


@pytest.mark.parametrize("env, line", [
    ({"WML_DATABASE": "CHANGE-ME"},
     "wml-backend: database: --database (or WML_DATABASE) must be a postgresql:// URL; "
     "leave it unset for SQLite under $WML_HOME"),
    ({"WML_SECRETS_KEY_FILE": "{key}"},
     "wml-backend: the key in {key} is not a Fernet key (32 url-safe base64-encoded bytes: "
     "docs/operations.md says how to make one)"),
])
def test_an_unfilled_template_stops_the_backend_with_one_line(tmp_path, env, line):
    key = tmp_path / "key"
    key.write_text("CHANGE-ME")
    env = {name: value.format(key=key) for name, value in env.items()}
    done = subprocess.run([sys.executable, "-m", "wml_backend.daemon", "serve"],
                          env={"PATH": "/usr/bin:/bin", "WML_HOME": str(tmp_path / "home"), **env},
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr.strip()) == (2, line.format(key=key))
