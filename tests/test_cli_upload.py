"""``wml upload`` claims its destination without the HTTP client library: its failures read as the
other commands' do, in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from backend_process import free_port


@pytest.mark.parametrize("backend, why", [("http://127.0.0.1:{port}", "ConnectionRefusedError"),
                                          ("not-a-url", "ValueError")])
def test_unreachable_backend_is_one_line(tmp_path, backend, why):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    url = backend.format(port=free_port())
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("WML_", "AWS_"))},
           "WML_HOME": str(tmp_path / "home"), "WML_BACKEND": url, "WML_TOKEN": "t"}
    out = subprocess.run([sys.executable, "-m", "wml_jupyter", "upload", str(tmp_path / "data"), "bkt"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == f"wml: cannot reach the backend at {url} ({why})\n"
