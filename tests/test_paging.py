"""Paged listings against a real backend: ``?limit=N`` pages, their cursors, and the client and
``wml list`` reading every page for callers that ask for no limit."""

from __future__ import annotations

import time

import httpx
import pytest
from backend_process import TINY, BackendProcess, started_backend, tiny_manifest

import wml_jupyter.client
from wml_jupyter import Client

#: Runs of the sweep that the paging tests read while it runs.
SWEEP = 40


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    with started_backend(tmp_path_factory.mktemp("paging")) as proc:
        yield proc


def _pages(backend: BackendProcess, path: str, limit: int, pause_s: float = 0.0, **params) -> list[list[dict]]:
    """Every page of a listing, following each ``Link: rel="next"``; ``pause_s`` between pages."""
    pages, url = [], f"{backend.url}{path}"
    params = {**params, "limit": limit}
    headers = {"Authorization": f"Bearer {backend.token}"}
    while url:
        response = httpx.get(url, params=params, headers=headers)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        url, params = (response.links.get("next") or {}).get("url"), None
        time.sleep(pause_s)
    return pages


def test_paging_lists_every_run_once_while_runs_change_state(backend, tmp_path):
    manifest = tiny_manifest(tmp_path, hyperparameters={"lr": [i / 100 for i in range(SWEEP)]})
    exp = backend.client().train(manifest, TINY)
    pages = _pages(backend, "/v1/runs", 6, pause_s=0.3, experiment=exp.id)
    listed = [run["id"] for page in pages for run in page]
    assert all(len(page) <= 6 for page in pages)
    assert sorted(listed) == sorted(r.id for r in exp.runs()) and len(listed) == SWEEP == len(set(listed))
    assert listed == sorted(listed, key=lambda i: int(i.rsplit("-", 1)[1])), "not in submission order"
    first_seen = {run["id"]: run["state"] for page in pages for run in page}
    now = {r.id: r.state.value for r in exp.runs()}
    assert first_seen != now, "no run changed state while the pages were read: the test shows nothing"


def test_experiments_page_newest_first(backend, tmp_path):
    client = backend.client()
    ids = [client.train(tiny_manifest(tmp_path, hyperparameters={"lr": [0.1]}), TINY).id
           for _ in range(3)]
    pages = _pages(backend, "/v1/experiments", 1)
    listed = [e["id"] for page in pages for e in page]
    assert listed[:3] == ids[::-1] and len(listed) == len(set(listed))
    assert [e.id for e in client.experiments()] == listed
    assert [e.id for e in client.experiments(limit=2)] == listed[:2]


def test_the_client_and_wml_list_read_every_page(backend, tmp_path, monkeypatch):
    monkeypatch.setattr(wml_jupyter.client, "PAGE_SIZE", 7)  # several pages from one sweep
    exp = backend.client().train(tiny_manifest(tmp_path, hyperparameters={"lr": [i / 10 for i in range(16)]}),
                                 TINY)
    runs = Client(backend=backend.url, token=backend.token).runs(experiment=exp.id)
    assert len(runs) == 16 == len({r.id for r in runs})
    assert len(Client(backend=backend.url, token=backend.token).runs(experiment=exp.id, limit=9)) == 9
    listed = backend.cli_json("list", "--experiment", exp.id)
    assert [r["id"] for r in listed] == [r.id for r in runs]
    assert len(backend.cli_json("list", "--experiment", exp.id, "--limit", "3")) == 3


def test_a_cursor_no_listing_gave_is_a_one_line_error(backend):
    response = httpx.get(f"{backend.url}/v1/runs", params={"limit": 5, "cursor": "not-a-cursor"},
                         headers={"Authorization": f"Bearer {backend.token}"})
    assert response.status_code == 422
    assert response.json() == {"code": "invalid",
                               "message": "cursor: 'not-a-cursor' is not a cursor a listing gave"}
    too_many = httpx.get(f"{backend.url}/v1/runs", params={"limit": 5000},
                         headers={"Authorization": f"Bearer {backend.token}"})
    assert too_many.status_code == 422 and too_many.json()["message"] == "query.limit: Input should be less than or equal to 1000"
