"""Authentication before the body (issue 13, item 5), as an attacker with no token tries it.

Before: every route read and parsed bodies up to 89 MiB before it looked at the token (a 40 MB
unauthenticated POST took the backend's RSS from 86 to 613 MB). Now the token is checked from the
headers alone, and each route caps its body.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from backend_process import BackendProcess
from wml_backend.api import BODY_LIMITS, OPERATOR_ROUTES, PUBLIC_ROUTES, SMALL_BODY_BYTES, create_app

#: What an attacker sends: more than any route would ever read.
ATTACK_BYTES = 50 * 2**20
#: How much the backend's memory may grow from such a request.
RSS_SLACK = 20 * 2**20


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A backend of its own, so that no other test's work moves its memory."""
    proc = BackendProcess(tmp_path_factory.mktemp("gate") / "wml-home", gpus=1).start()
    yield proc
    proc.close()


def rss(proc: BackendProcess) -> int:
    return psutil.Process(proc.proc.pid).memory_info().rss


def raw_post(url: str, path: str, body_bytes: int, headers: dict[str, str], chunked: bool = False) -> str:
    """POST ``body_bytes`` of junk as an attacker would (declared, or chunked), while reading the
    answer; return its status line. The body keeps coming even after the answer."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_bytes}"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{head}{framing}\r\n\r\n"
                     .encode())
        sender = threading.Thread(target=_send_junk, args=(sock, body_bytes, chunked), daemon=True)
        sender.start()
        answer = sock.recv(65536).decode("latin-1")
        sender.join(60)
    return answer.split("\r\n", 1)[0]


def _send_junk(sock: socket.socket, total: int, chunked: bool) -> None:
    block = b"x" * (1 << 20)
    try:
        for _ in range(total // len(block)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
    except OSError:
        pass  # the backend may close the connection: what it answered is what counts


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("path, token", [
    ("/v1/experiments", None),                      # the route with the largest limit
    ("/v1/experiments", "not-a-token"),
    ("/v1/runner/abc123-01/metrics", "stolen?"),    # a runner route, with a guessed token
    ("/v1/accounts", None),
])
def test_a_50_mb_post_without_a_valid_token_is_refused_unread(target, path, token, chunked):
    httpx.get(f"{target.url}/v1/usage", headers={"Authorization": f"Bearer {target.token}"})  # warm
    before = rss(target)
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status = raw_post(target.url, path, ATTACK_BYTES, headers, chunked)
    assert status.startswith("HTTP/1.1 401"), status
    grown = rss(target) - before
    assert grown < RSS_SLACK, f"the backend's memory grew by {grown >> 20} MiB"
    assert time.monotonic() - started < 60
    assert httpx.get(f"{target.url}/healthz").status_code == 200


def test_a_guessed_run_id_answers_as_a_wrong_token_does(target):
    """A runner route told an unknown run (404) from a known run with a wrong token (401)."""
    answer = httpx.post(f"{target.url}/v1/runner/zzzzzz-01/state", json={"state": "COMPLETED"},
                        headers={"Authorization": "Bearer guess"})
    assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"


def test_an_account_route_caps_its_body_small(target):
    """An administrator's token may send an account, not megabytes."""
    answer = httpx.post(f"{target.url}/v1/accounts", content=b"{" + b" " * SMALL_BODY_BYTES + b"}",
                        headers={"Authorization": f"Bearer {target.token}", "Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json() == {"code": "too_large", "message": "the request body is over the limit of 256 KiB"}


def test_public_routes_need_no_token(target):
    assert httpx.get(f"{target.url}/healthz").status_code == 200
    assert httpx.get(f"{target.url}/openapi.json").status_code == 200


def test_every_route_is_authenticated_unless_public_and_limits_name_real_routes(tmp_path, request):
    """A route added later is authenticated and small by default; the limits table names real routes.
    (The operator's routes answer this host's own callers: this in-process client is one.)"""
    service = _service(tmp_path)
    app = create_app(service)
    request.addfinalizer(service.executor.close)  # its idle runners
    paths = {route.path for route in app.router.routes}
    assert set(BODY_LIMITS) <= paths and PUBLIC_ROUTES >= {"/healthz", "/openapi.json"}
    guarded = [route for route in app.router.routes if route.path not in PUBLIC_ROUTES | OPERATOR_ROUTES]
    assert len(guarded) >= 20
    for route, status in zip(guarded, anyio.run(_statuses_without_token, app, guarded)):
        assert status == 401, (route.methods, route.path, status)


async def _statuses_without_token(app, routes: list) -> list[int]:
    """The status each route answers a request with no token and a 4 MiB body."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return [(await client.request(sorted(route.methods - {"HEAD"})[0], route.path.replace("{", "").replace("}", ""),
                                      content=b"x" * (4 << 20))).status_code for route in routes]


def _service(home: Path):
    """A service over a fresh store that nothing starts (the in-process app needs one)."""
    from wml_backend.executors.local import LocalExecutor
    from wml_backend.rundb import SqliteRunStore
    from wml_backend.service import Service
    from wml_backend.settings import Settings
    settings = Settings(home=home)
    return Service(settings, SqliteRunStore(settings.database), LocalExecutor(settings.work_dir, gpus=0, slots=1))
