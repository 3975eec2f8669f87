"""The bad-input corpus through the REST API of a real backend: a 4xx ``{code, message}``
with a clear message, and nothing stored."""

from __future__ import annotations

import base64
import json

import corpus
import httpx
import pytest
from checks import assert_clear
from wml_core.errors import ERRORS_BY_CODE

#: Codes an error body may carry: the domain errors' and the framework's own.
CODES = set(ERRORS_BY_CODE) | {"method_not_allowed"}
GOOD_CODE = base64.b64encode(corpus._zip()).decode()


@pytest.fixture(scope="module")
def api(server):
    """An HTTP client of the backend, with no token: each request brings its own."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def refused(response: httpx.Response, mentions: tuple[str, ...]) -> str:
    """Check a response refuses its request clearly; return the message."""
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] in CODES, body
    assert_clear(body["message"], mentions)
    return body["message"]


def as_json(value) -> bytes:
    """``value`` as JSON (ASCII: lone surrogates travel as ``\\udcXX`` escapes, as they would from
    a careless client)."""
    return json.dumps(value).encode()


def submit(api: httpx.Client, token: str, **body) -> httpx.Response:
    return api.post("/v1/experiments", content=as_json(body),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


@pytest.mark.parametrize("case", corpus.manifest_cases(), ids=lambda c: c.id)
def test_a_bad_manifest_is_refused(case, api, server, probe):
    # JSON carries text: bytes that are not UTF-8 arrive as lone surrogates, as a buggy client sends them.
    text = case.data.decode("utf-8", "surrogateescape")
    response = submit(api, server.token, manifest=text, manifest_name=case.filename, code_zip_b64=GOOD_CODE)
    refused(response, case.mentions[:1])
    probe.assert_untouched()


@pytest.mark.parametrize("case", corpus.sweep_cases(), ids=lambda c: c.id)
def test_a_bad_sweep_is_refused(case, api, server, probe):
    response = submit(api, server.token, manifest=case.manifest, code_zip_b64=GOOD_CODE, sweep=[case.flag],
                      runs=case.runs)
    refused(response, case.mentions)
    probe.assert_untouched()


@pytest.mark.parametrize("case", corpus.zip_cases(), ids=lambda c: c.id)
def test_a_bad_code_zip_is_refused(case, api, server, probe):
    response = submit(api, server.token, manifest=corpus.GOOD_MANIFEST,
                      code_zip_b64=base64.b64encode(case.data).decode())
    refused(response, case.mentions)
    probe.assert_untouched()


@pytest.mark.parametrize("case", corpus.request_cases(), ids=lambda c: c.id)
def test_a_bad_request_is_refused(case, api, server, probe):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {server.token}"} if case.auth else {}),
               **case.headers}
    content = case.content if case.content is not None else as_json(case.json)
    response = api.request(case.method, case.path, headers=headers, content=content)
    refused(response, case.mentions)
    probe.assert_untouched()
