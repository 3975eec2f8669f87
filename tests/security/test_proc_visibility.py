"""Training code looking at the other processes of its machine (issue #13, item 4), through a real
backend, real runners and the local executor.

A run's command runs as a user of its own in a mount namespace of its own, whose ``/proc`` is a
procfs of that namespace's own that shows only that user's processes (``hidepid=invisible``,
``wml_runner.isolation``): not its runner, not the backend, not another run, whose command line
holds its hyperparameters (a cold start's). The host's ``/proc`` is left as it is.
"""

from __future__ import annotations

import json
import secrets

import psutil
from test_run_isolation import VICTIM, account, host, show, submit_code, written  # noqa: F401 (host: a fixture)

#: Training code that lists every process it can see: its owner and command line, to seen.json.
PEEK = r'''
import json, os
from pathlib import Path
seen = {}
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        uid = int(open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0])
        seen[pid] = [uid, open(f"/proc/{pid}/cmdline", "rb").read().decode("latin-1")]
    except (OSError, IndexError):
        continue
found = {"uid": os.getuid(), "ppid": os.getppid(), "pid": os.getpid(), "seen": seen}
(Path(os.environ["RESULT_DIR"]) / "seen.json").write_text(json.dumps(found))
'''


def test_training_code_sees_only_its_own_processes_not_another_runs_command_line(host, tmp_path):
    ann, bo = account(host), account(host)
    victim_secret = f"ann-argument-{secrets.token_hex(16)}"
    victim = submit_code(host, tmp_path / "victim", VICTIM, ann, {"secret": victim_secret, "steps": 300},
                         command="python3 train.py --secret ${secret}")
    host.wait_state(victim, "PROCESSING", token=ann)
    uid = int(written(host.home / "backend" / "runs" / victim / "results" / "uid.txt"))
    victims = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
    assert victims, "ann's command runs as her run's user (the host's /proc, which root sees whole, shows it)"
    peeker = submit_code(host, tmp_path / "peeker", PEEK, bo, {"x": 1})
    host.wait_state(peeker, "COMPLETED", token=bo)
    assert show(host, victim, ann)["state"] == "PROCESSING", "ann's run was running all along"
    host.cli("cancel", victim, token=ann, check=True)

    found = json.loads((host.home / "storage" / "wml-results" / f"training-{peeker}" / "seen.json").read_text())
    assert str(found["pid"]) in found["seen"], "it sees itself"
    owners = {uid for uid, _ in found["seen"].values()}
    assert owners == {found["uid"]}, f"it sees processes of other users: {found['seen']}"
    assert str(found["ppid"]) not in found["seen"], "its runner (root) is invisible"
    assert not {str(p.pid) for p in victims} & set(found["seen"]), "ann's command is invisible"
    assert not [cmd for _, cmd in found["seen"].values() if victim_secret in cmd]
    assert len(psutil.pids()) > len(found["seen"]), "the host's /proc still shows every process"
