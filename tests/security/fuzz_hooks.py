"""Schemathesis hooks for fuzzing the backend (loaded through ``SCHEMATHESIS_HOOKS``).

A generated ``POST /v1/experiments`` body is almost never a valid manifest plus a valid code
zip, so stateful testing would never get past it. Half of those bodies are therefore replaced
by a valid submission: its 201 response feeds the links to the experiment, its runs, their
logs, metrics, cancel and rerun. Its runs ask for one GPU of a one-GPU backend and sleep, so
they queue rather than load the machine, and are there to be cancelled.
"""

from __future__ import annotations

import base64
import io
import zipfile

import schemathesis
from hypothesis import strategies as st

#: A definition whose runs sleep on the backend's only GPU (so the rest stay QUEUED).
MANIFEST = "name: fuzz\ngpus: 1\nframework: {name: custom, command: 'sleep 20'}\n"


def _code_zip() -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train.py", "print('fuzz')\n")
    return base64.b64encode(buffer.getvalue()).decode()


VALID = {"manifest": MANIFEST, "code_zip_b64": _code_zip()}


@schemathesis.hook
def flatmap_body(context, body):
    """Keep the generated body of ``POST /v1/experiments``, or swap in a valid submission."""
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", "/v1/experiments"):
        return st.just(body)
    runs = body.get("runs") if isinstance(body, dict) else None
    valid = {**VALID, "runs": runs} if isinstance(runs, int) and 1 <= runs <= 3 else VALID
    return st.sampled_from([body, valid])
