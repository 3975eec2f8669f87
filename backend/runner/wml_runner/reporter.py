"""The runner's side of the backend API, patient with a backend that restarts."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import httpx

from wml_core.errors import StorageError
from wml_core.models import LogAppend, MetricPoint, RunSpec, StateReport, StoreCredential
from wml_core.states import RunState

log = logging.getLogger("wml_runner")

#: How long a report keeps being retried while the backend is unreachable.
REPORT_DEADLINE_S = 600.0


class Reporter:
    """Calls the backend as one run's runner; retries through connection errors and 5xx."""

    def __init__(self, url: str, run_id: str, token: str, deadline_s: float = REPORT_DEADLINE_S):
        self.run_id, self.deadline_s = run_id, deadline_s
        # Loading CA certificates costs ~40 ms a runner; plain HTTP (the local backend) needs none.
        self._http = httpx.Client(base_url=f"{url.rstrip('/')}/v1/runner/{run_id}",
                                  headers={"Authorization": f"Bearer {token}"}, timeout=30.0,
                                  verify=url.startswith("https://"))

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline, delay = time.monotonic() + self.deadline_s, 0.05
        while True:
            late = time.monotonic() > deadline
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if late:
                    raise
                log.warning("backend unreachable (%s); retrying", type(exc).__name__)
            else:
                if response.status_code < 500 or late:
                    response.raise_for_status()
                    return response
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def spec(self) -> RunSpec:
        """What to run."""
        return RunSpec.model_validate(self._call("GET", "/spec").json())

    def code(self) -> bytes:
        """The code zip."""
        return self._call("GET", "/code").content

    def credential(self) -> dict:
        """A fresh store credential scoped to this run (botocore's refresh format); a one-line
        ``StorageError`` with the backend's reason when it has none to give."""
        try:
            found = StoreCredential.model_validate(self._call("GET", "/credential").json())
        except httpx.HTTPStatusError as exc:
            raise StorageError(_message(exc.response)) from None
        return {"access_key": found.access_key, "secret_key": found.secret_key, "token": found.session_token,
                "expiry_time": found.expires.isoformat()}

    def state(self, state: RunState, exit_code: Optional[int] = None, reason: Optional[str] = None,
              log_tail: Optional[list[str]] = None) -> None:
        """Report that the run entered ``state``."""
        report = StateReport(state=state, exit_code=exit_code, reason=reason, log_tail=log_tail or [])
        self._call("POST", "/state", json=report.model_dump(mode="json"))

    def metrics(self, points: list[MetricPoint]) -> None:
        """Ship metric points (idempotent by sequence number)."""
        self._call("POST", "/metrics", json=[p.model_dump() for p in points])

    def log(self, learner: int, offset: int, text: str) -> int:
        """Append log text at ``offset``; return the log's length on the backend."""
        body = LogAppend(learner=learner, offset=offset, data=text).model_dump()
        return self._call("POST", "/logs", json=body).json()["count"]

    def close(self) -> None:
        """Close the connection."""
        self._http.close()


def _message(response: httpx.Response) -> str:
    """The backend's one-line reason for refusing a request (its JSON ``message``), or the status."""
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return f"the backend answered {response.status_code}"
