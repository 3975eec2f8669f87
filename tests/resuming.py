"""A run that resumes from its checkpoint: the training code and its submission, for the tests of
disruptions (an eviction, Kueue preemption, ``wml backend stop --drain``)."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path
from typing import Optional

import yaml

#: Training code that resumes from ``CHECKPOINT_DIR/step`` and writes it after every step.
RESUMING = textwrap.dedent("""\
    import os, sys, time
    from pathlib import Path
    from wml_jupyter import run
    hp = run.hparams()
    ckpt = Path(os.environ["CHECKPOINT_DIR"]) / "step"
    first = int(ckpt.read_text()) + 1 if ckpt.exists() else 1
    print(f"starting at step {first}", flush=True)
    (Path(os.environ["RESULT_DIR"]) / f"started-at-{first}.txt").write_text("")
    for step in range(first, int(hp["steps"]) + 1):
        time.sleep(float(hp["sleep"]))
        ckpt.write_text(str(step))
        run.log(step=step, loss=1.0 / step)
        print(f"step {step}", flush=True)
    """)


def resuming_run(backend, folder: Path, steps: int = 12, sleep: float = 1.0, max_retries: int = 0,
                 token: Optional[str] = None) -> str:
    """Submit one run of ``RESUMING`` to ``backend`` (as the account of ``token``, else its
    default); its id."""
    code = folder / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "train.py").write_text(RESUMING)
    manifest = {"name": "resume", "version": "1.0", "gpus": 1, "cpus": 1, "memory": "256Mi",
                "max_retries": max_retries,
                "framework": {"name": "custom", "version": "1", "command": "python3 train.py"},
                "hyperparameters": {"steps": [steps], "sleep": [sleep]}}
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(manifest))
    result = backend.cli("train", str(path), str(code), token=token)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1] + "-01"


def drain(backend) -> None:
    """Stop ``backend`` (a ``BackendProcess``) with ``wml backend stop --drain``; it must exit by
    itself (0), not be killed. Its process is reaped at once: ``stop`` waits while it is a zombie."""
    reaped = threading.Thread(target=backend.proc.wait)
    reaped.start()
    backend.cli("backend", "stop", "--drain", "--json", check=True)
    reaped.join(30)
    assert backend.proc.returncode == 0, backend.proc.returncode
