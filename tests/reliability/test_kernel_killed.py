"""The notebook kernel killed mid-sweep: the sweep goes on in the backend, and `%wml watch`
in a new kernel finds it and follows it to the end (real Jupyter kernels, real signals)."""

from __future__ import annotations

import os

import pytest
from jupyter_client.manager import start_new_kernel

from backend_process import BackendProcess

CELL = '''%%wml train --name survivor --gpus 1 --sweep 'x=[1,2,3,4]' --runs 4
import time
from wml_jupyter import run
for step in range(1, 6):
    run.log(step=step, x=run.hparams()["x"] * step)
    time.sleep(0.4)
'''


def execute(client, code: str, timeout: float = 120) -> dict:
    """Run ``code`` in the kernel; return its result text and error, if any."""
    msg_id = client.execute(code)
    out = {"text": "", "error": None}
    while True:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind in ("execute_result", "display_data"):
            out["text"] += content["data"].get("text/plain", "")
        elif kind == "stream":
            out["text"] += content["text"]
        elif kind == "error":
            out["error"] = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            return out


@pytest.fixture
def backend_env(tmp_path):
    backend = BackendProcess(tmp_path / "home", gpus=2).start()
    saved = dict(os.environ)
    os.environ.update({"WML_HOME": str(backend.home), "WML_BACKEND": backend.url, "WML_TOKEN": backend.token,
                       "IPYTHONDIR": str(tmp_path / "ipython")})
    yield backend
    os.environ.clear()
    os.environ.update(saved)
    backend.close()


def test_sweep_survives_a_killed_kernel_and_watch_finds_it(backend_env):
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        assert execute(client, "%load_ext wml_jupyter")["error"] is None
        submitted = execute(client, CELL)
        assert submitted["error"] is None, submitted
        exp_id = execute(client, "print(_.id)")["text"].strip()
        assert exp_id
    finally:
        client.stop_channels()
        os.kill(manager.provisioner.process.pid, 9)  # the kernel dies mid-sweep
        manager.cleanup_resources()
    runs = backend_env.cli_json("list", "--experiment", exp_id)
    assert len(runs) == 4 and any(r["state"] != "COMPLETED" for r in runs), "still running after the kill"
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        execute(client, "%load_ext wml_jupyter")
        watched = execute(client, f"exp = %wml watch {exp_id}\nexp.wait(timeout=120).state")
        assert watched["error"] is None, watched
        assert "COMPLETED" in watched["text"]
        steps = execute(client, "sorted(r.metrics['step'] for r in exp.runs())")["text"]
        assert steps.strip() == "[5.0, 5.0, 5.0, 5.0]"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
