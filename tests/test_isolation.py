"""Isolation: one account never reaches another's objects, on any route; admin routes need the
admin; runner routes need the run's own token; $WML_HOME is private to its owner."""

from __future__ import annotations

import stat

import httpx

from test_cli_e2e import TINY, definition, submit


def test_every_route_hides_other_accounts_objects(backend, tmp_path):
    token_a = backend.cli("accounts", "create", "ann", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    token_b = backend.cli("accounts", "create", "bo", "--gpus", "1", check=True).stdout.strip().splitlines()[-1]
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1]}), token=token_a)
    backend.wait_experiment(exp_id, token=token_a)
    run_id = f"{exp_id}-01"
    b = httpx.Client(base_url=backend.url, headers={"Authorization": f"Bearer {token_b}"})
    routes = [("GET", f"/v1/experiments/{exp_id}"), ("POST", f"/v1/experiments/{exp_id}/cancel"),
              ("GET", f"/v1/runs/{run_id}"), ("POST", f"/v1/runs/{run_id}/cancel"),
              ("POST", f"/v1/runs/{run_id}/rerun"), ("GET", f"/v1/runs/{run_id}/logs"),
              ("GET", f"/v1/runs/{run_id}/metrics")]
    for method, path in routes:
        response = b.request(method, path)
        assert response.status_code == 404, (method, path, response.status_code)
        assert response.json()["code"] == "not_found"
    assert b.get("/v1/experiments").json() == []
    assert b.get("/v1/runs", params={"experiment": exp_id}).status_code == 404
    assert b.get("/v1/usage").json()["gpu_seconds"] == 0
    assert b.post("/v1/accounts", json={"name": "mallory", "gpus": 8}).status_code == 403
    for path in (f"/v1/runner/{run_id}/spec", f"/v1/runner/{run_id}/code"):
        assert b.get(path).status_code == 401, "an account token is not a runner token"
    for method, path in [*routes, ("GET", "/v1/experiments"), ("GET", "/v1/usage")]:
        assert httpx.request(method, backend.url + path).status_code == 401, (method, path)


def test_wml_home_is_private(backend, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("private data")
    assert backend.cli("upload", str(data), "mine").returncode == 0
    exp_id = submit(backend, definition(tmp_path, hyperparameters={"lr": [0.1]}))
    backend.wait_experiment(exp_id)
    backend.cli("config", "set", "endpoint", "http://127.0.0.1:1")
    exposed = []
    for path in [backend.home, *backend.home.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or path.name == "backend-test.log":
            continue
        if mode & 0o077:
            exposed.append(f"{oct(mode & 0o777)} {path.relative_to(backend.home)}")
    assert exposed == [], "readable by others: " + ", ".join(exposed[:10])


def test_backend_listens_on_loopback_only(backend):
    import psutil
    listening = [c.laddr for c in psutil.Process(backend.proc.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_refuses_plain_http_beyond_loopback(wml_home):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "wml_jupyter", "backend", "start", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "needs TLS" in result.stderr and "--insecure" in result.stderr
