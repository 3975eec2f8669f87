"""The Python API: ``Client`` talks to the backend over HTTP and to object storage directly."""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import httpx
from pydantic import BaseModel, ValidationError

from wml_core import models
from wml_core.errors import BackendUnavailable, InvalidInput, WmlError, error_of_answer, quoted
from wml_core.manifest import read_manifest_text
from wml_core.pages import Summary
from wml_core.objectstore.resolve import wml_home

from .codezip import package
from .describe import waiting_text
from .config import Profile, load_profile
from .objects import Experiment, Run

#: Seconds a call waits for the backend.
HTTP_TIMEOUT_S = 60.0
#: Items asked for per request when a listing is read whole (the backend's largest page).
PAGE_SIZE = 1000
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: What a run or experiment id may hold: anything else would change the URL the id goes in.
_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
#: What an account name may be (the backend's rule).
_ACCOUNT = re.compile(r"[a-z][a-z0-9_-]{0,62}")


class Client:
    """Everything wml does, from Python: train, watch, fetch, cancel."""

    def __init__(self, backend: Optional[str] = None, token: Optional[str] = None,
                 profile: Optional[str] = None):
        self.profile: Profile = load_profile(profile)
        url = backend or self.profile.backend
        token = token or self.profile.token
        if not url:
            url, token = _embedded_backend(token, self.profile)
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S,
                                  headers={"Authorization": f"Bearer {token}"} if token else {})

    # -- transport ------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the backend; a domain error comes back as the same ``WmlError`` class."""
        return self._send(method, path, **kwargs).json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The backend's answer to one call; a domain error is raised as the same ``WmlError`` class."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the backend at {self.url} ({type(exc).__name__})") from None
        if response.status_code >= 400:
            raise error_of(response)
        return response

    def listing(self, path: str, params: dict[str, Any], limit: Optional[int] = None) -> Iterator[Any]:
        """The items of a paged listing, a page at a time, following each page's cursor to the end
        (or until ``limit`` items)."""
        cursor, left = None, limit
        while left is None or left > 0:
            size = PAGE_SIZE if left is None else min(left, PAGE_SIZE)
            page = {"limit": size, **({"cursor": cursor} if cursor else {})}
            response = self._send("GET", path, params={**params, **page})
            items = response.json()
            yield from items
            left = None if left is None else left - len(items)
            cursor = _next_cursor(response)
            if cursor is None or not items:
                return

    # -- training -------------------------------------------------------------------------
    def train(self, manifest: str | os.PathLike, model: Optional[str | os.PathLike] = None, *,
              sweep: Optional[list[str]] = None, runs: Optional[int] = None,
              code: Optional[bytes] = None, manifest_text: Optional[str] = None) -> Experiment:
        """Submit a definition (manifest file + code directory or zip) as an experiment."""
        body = train_request(manifest, model, sweep=sweep, runs=runs, code=code, manifest_text=manifest_text)
        data = self.request("POST", "/v1/experiments", json=body.model_dump())
        return Experiment(models.Experiment.model_validate(data), self)

    def train_code(self, source: str, *, notebook: Optional[dict] = None, first_line: int = 1,
                   **options: Any) -> Experiment:
        """Submit Python source (e.g. a notebook cell) as ``train.py`` of a new definition.

        ``options`` are those of ``%%wml train`` (``wml_core.train_options``: name, gpus, sweep,
        runs, metric, mode, data, include...). The source must be self-contained: a name it uses
        but never defines is an ``InvalidInput`` naming the line (counted from ``first_line``),
        raised before submitting; ``notebook`` (a namespace) improves the hint.
        """
        from wml_core.train_options import train_options

        from .cell import definition
        manifest_text, code = definition(source, train_options(options), notebook, first_line)
        return self.train("manifest.yml", manifest_text=manifest_text, code=code)

    def watch(self, experiment_id: str, metric: Optional[str] = None) -> Experiment:
        """The experiment with a live display attached (it renders as one in a notebook)."""
        return self.experiment(experiment_id).watch(metric)

    def compare(self, experiment_id: str, metric: Optional[str] = None):
        """An experiment's runs sorted by its metric, best first (``compare.Comparison``)."""
        return self.experiment(experiment_id).compare(metric)

    def events(self, on_event: Any, on_connect: Any = None):
        """The account's server-sent events for ``on_event(type, payload)``: an unstarted
        ``events.EventStream`` (reconnects by itself; ``on_connect`` runs after each connection)."""
        from .event_stream import EventStream
        return EventStream(self.url, self.auth_headers(), on_event, on_connect)

    def auth_headers(self) -> dict[str, str]:
        """The header that authenticates a request to the backend, for streams read elsewhere."""
        auth = self._http.headers.get("Authorization")
        return {"Authorization": auth} if auth else {}

    def rerun(self, run_id: str) -> Experiment:
        """Submit a run again (same code, data, definition, hyperparameters) as a new experiment."""
        return Experiment(models.Experiment.model_validate(self.request("POST", f"/v1/runs/{_id(run_id)}/rerun")), self)

    # -- queries --------------------------------------------------------------------------
    def experiments(self, limit: Optional[int] = None) -> list[Experiment]:
        """Your experiments, newest first: all of them, or the ``limit`` newest."""
        return [Experiment(models.Experiment.model_validate(e), self)
                for e in self.listing("/v1/experiments", {}, limit)]

    def experiment(self, experiment_id: str) -> Experiment:
        """One experiment."""
        return Experiment(models.Experiment.model_validate(
            self.request("GET", f"/v1/experiments/{_id(experiment_id)}")), self)

    def runs(self, experiment: Optional[str] = None, state: Optional[str] = None,
             limit: Optional[int] = None) -> list[Run]:
        """Your runs in submission order, optionally of one experiment and/or in one state: all of
        them, or the first ``limit``."""
        params = {k: v for k, v in {"experiment": experiment, "state": state}.items() if v}
        return [Run(models.Run.model_validate(r), self) for r in self.listing("/v1/runs", params, limit)]

    def run(self, run_id: str) -> Run:
        """One run."""
        return Run(models.Run.model_validate(self.request("GET", f"/v1/runs/{_id(run_id)}")), self)

    def cancel(self, id: str) -> Any:
        """Cancel a run, or every live run of an experiment."""
        if _is_run_id(id):
            return Run(models.Run.model_validate(self.request("POST", f"/v1/runs/{_id(id)}/cancel")), self)
        return Experiment(models.Experiment.model_validate(
            self.request("POST", f"/v1/experiments/{_id(id)}/cancel")), self)

    def logs(self, run_id: str, offset: int = 0, learner: int = 1) -> models.LogChunk:
        """The run's training log from byte ``offset``."""
        return models.LogChunk.model_validate(self.request(
            "GET", f"/v1/runs/{_id(run_id)}/logs", params={"offset": offset, "learner": learner}))

    def follow_logs(self, run_id: str, learner: int = 1, poll_s: float = 0.5) -> Iterator[str]:
        """Yield log text as it comes until the run has ended."""
        offset = 0
        while True:
            chunk = self.logs(run_id, offset, learner)
            if chunk.data:
                yield chunk.data
            offset = chunk.next_offset
            if chunk.complete:
                return
            if not chunk.data:
                time.sleep(poll_s)

    def wait_to_start(self, run_id: str, say: Callable[[str], None], poll_s: float = 1.0) -> bool:
        """Block while the run waits to start (queued, or not yet placed by its cluster), calling
        ``say(line)`` with what it waits for, its place and ETA (``EXP-01 #2 in the queue · waits for
        a GPU: 1 of 1 in use · starts in ~3 min``) each time that changes; whether it waited."""
        said = ""
        while True:
            run = self.run(run_id).model
            line = waiting_text(run)
            if not line:
                return bool(said)
            if line != said:
                say(f"{run.id} {line}")
                said = line
            time.sleep(poll_s)

    def metrics(self, run_id: str, since: int = -1) -> list[models.MetricPoint]:
        """Every metric point a run logged (after sequence number ``since``)."""
        return [models.MetricPoint.model_validate(p) for p in self.request(
            "GET", f"/v1/runs/{_id(run_id)}/metrics", params={"since": since})]

    def summary(self, offset: int = 0, expanded: Optional[dict[str, int]] = None,
                limit: Optional[int] = None) -> Summary:
        """What the sidebar shows, in one request: usage, the experiments from ``offset`` (a page, or
        ``limit``), and the runs of each ``expanded`` experiment from its offset, with sparklines."""
        params = {"offset": offset, "expand": [f"{i}:{o}" for i, o in (expanded or {}).items()],
                  **({"limit": limit} if limit else {})}
        return Summary.model_validate(self.request("GET", "/v1/summary", params=params))

    def usage(self) -> models.Usage:
        """Your GPU quota, GPUs in use and queued, and GPU time per experiment."""
        return models.Usage.model_validate(self.request("GET", "/v1/usage"))

    def create_account(self, name: str, gpus: int, **limits: Any) -> models.AccountCreated:
        """A new account with a GPU quota and, optionally, limits of its own (``slots``, ``cpus``,
        ``memory`` such as ``16Gi``, ``max_queued``); administrators only. Its token is shown once."""
        body = {"name": name, **_limits(gpus=gpus, **limits)}
        return models.AccountCreated.model_validate(self.request("POST", "/v1/accounts", json=body))

    def update_account(self, name: str, **limits: Any) -> models.AccountInfo:
        """Change an account's limits (``gpus``, ``slots``, ``cpus``, ``memory``, ``max_queued``);
        the others stay. Administrators only."""
        return models.AccountInfo.model_validate(
            self.request("PATCH", f"/v1/accounts/{_account(name)}", json=_limits(**limits)))

    def disable_account(self, name: str) -> models.AccountInfo:
        """Disable an account: its tokens stop working at once and its queued runs are halted."""
        return models.AccountInfo.model_validate(self.request("POST", f"/v1/accounts/{_account(name)}/disable"))

    def rotate_token(self, name: str) -> models.AccountToken:
        """Give an account a new token (shown once); the old one stops working at once."""
        return models.AccountToken.model_validate(self.request("POST", f"/v1/accounts/{_account(name)}/token"))

    # -- storage --------------------------------------------------------------------------
    def store(self):
        """The object store this client uploads to and downloads from."""
        from .storage import client_store
        return client_store(self.profile)

    def upload(self, path: str | os.PathLike, bucket: str, progress: Any = None):
        """Sync a local file or directory to ``bucket[/prefix]``; return what was sent. The backend
        first records the destination as your account's: another account's is refused (``NotFound``)."""
        from .storage import checked_upload, upload
        name, prefix = checked_upload(path, bucket)
        self.request("POST", "/v1/data/claims", json={"bucket": name, "prefix": prefix})
        return upload(self.profile, path, bucket, progress=progress)

    def download(self, run_id: str, dest: str | os.PathLike = ".", progress: Any = None, part: str = "all"):
        """Pull a run's results into ``dest``: ``all``, only the ``logs``, or the submitted ``model`` code."""
        from wml_core.objectstore.sync import download
        if Path(dest).exists() and not Path(dest).is_dir():
            raise InvalidInput(f"{dest}: exists and is not a directory")
        run = self.run(run_id)
        bucket, _, prefix = run.results.partition("/")
        folders = {"all": [""], "model": ["_submitted_code/"],
                   "logs": [f"learner-{k}/" for k in range(1, run.learners + 1)]}
        if part not in folders:
            raise InvalidInput(f"part: {part!r} is not one of {', '.join(folders)}")
        summaries = [download(self.store(), bucket, prefix + folder, Path(dest) / folder, progress=progress)
                     for folder in folders[part]]
        return summaries[0] if len(summaries) == 1 else _total(summaries)


def train_request(manifest: str | os.PathLike, model: Optional[str | os.PathLike] = None, *,
                  sweep: Optional[list[str]] = None, runs: Optional[int] = None, code: Optional[bytes] = None,
                  manifest_text: Optional[str] = None) -> models.ExperimentRequest:
    """What ``Client.train`` submits: the manifest's text, the packaged code, the sweep flags."""
    path = Path(manifest)
    if manifest_text is None and not path.exists():
        raise InvalidInput(f"{path}: no such file")
    if manifest_text is None:
        manifest_text = read_manifest_text(path)
    if code is None:
        code = _package(model, path)
    return _checked(models.ExperimentRequest, manifest=manifest_text, manifest_name=str(path),
                    code_zip_b64=base64.b64encode(code).decode(), sweep=list(sweep or []), runs=runs,
                    env=_referenced_env(manifest_text))


def _total(summaries: list) -> Any:
    """One summary of several transfers."""
    from wml_core.objectstore import SyncSummary
    return SyncSummary.combined(summaries)


def _next_cursor(response: httpx.Response) -> Optional[str]:
    """The cursor of the page after this one, from its ``Link: <...>; rel="next"`` header (None: the last)."""
    link = response.links.get("next")
    if not link:
        return None
    return httpx.URL(link["url"]).params.get("cursor")


def error_of(response: httpx.Response) -> WmlError:
    """The ``WmlError`` a failed answer of the backend stands for (its ``{code, message}`` body)."""
    return error_of_answer(response.status_code, response.reason_phrase, response.content)


def _checked(model: type[BaseModel], **fields: Any) -> BaseModel:
    """``model(**fields)``; a field the backend would refuse is an ``InvalidInput`` naming it."""
    try:
        return model(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        raise InvalidInput(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _package(model: Optional[str | os.PathLike], manifest: Path) -> bytes:
    """The code zip of ``model``; a file that cannot be read is an ``InvalidInput`` naming it."""
    try:
        return package(model, manifest)
    except OSError as exc:
        raise InvalidInput(f"{exc.filename or model}: {exc.strerror or 'cannot be read'}") from None


def _referenced_env(manifest: str) -> dict[str, str]:
    """Values of the environment variables a manifest names as ``${VAR}`` (for credentials)."""
    return {name: os.environ[name] for name in set(_ENV_REF.findall(manifest)) if name in os.environ}


def _id(value: str) -> str:
    """``value``, checked to be an id, so that it names one object in a URL path."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidInput(f"{quoted(value)} is not a run or experiment id")
    return value


def _account(name: str) -> str:
    """``name``, checked to be an account name, so that it names one account in a URL path."""
    if not isinstance(name, str) or not _ACCOUNT.fullmatch(name):
        raise InvalidInput(f"name: {quoted(name)} is not an account name (a-z first, then a-z, 0-9, _ or -)")
    return name


def _limits(memory: Optional[str] = None, **limits: Any) -> dict[str, Any]:
    """Account limits as the backend takes them (``memory`` such as ``16Gi`` in bytes), those given only."""
    from wml_core.manifest import parse_memory
    body = {k: v for k, v in limits.items() if v is not None}
    if memory is not None:
        try:
            body["memory_bytes"] = parse_memory(memory)
        except ValueError as exc:
            raise InvalidInput(f"memory: {exc}") from None
    return dict(_checked(models.AccountLimits, **body).model_dump(exclude_unset=True))


def _is_run_id(value: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]+-\d+", value))


def _embedded_backend(token: Optional[str], profile: Profile) -> tuple[str, Optional[str]]:
    """Find or start the embedded backend (with the profile's store); return its URL and admin token."""
    from . import launcher
    info = launcher.embedded_backend(profile)
    if token is None:
        token_file = wml_home() / "backend" / "token"
        token = token_file.read_text().strip() if token_file.exists() else None
    return info["url"], token
