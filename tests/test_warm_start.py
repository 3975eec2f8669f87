"""Warm starts (issue #15, item 1) through a real backend as root: a pytorch run's command is
forked from an interpreter that already imported torch (``wml_runner.zygote``), and sees exactly
what a cold run of the same script sees; the zygote, and so the run's own memory, holds no secret;
a framework whose import fails starts cold, saying so in the run's log.
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
import sys
from pathlib import Path

import psutil
import pytest

from backend_process import BackendProcess
from test_cli_e2e import definition

#: Secrets planted in the backend's environment: neither a zygote nor a run may hold them.
PLANTED = {"WML_PLANTED_SECRET": f"planted-{secrets.token_hex(16)}",
           "AWS_SECRET_ACCESS_KEY": f"aws-{secrets.token_hex(16)}"}


def writable_memory(pid):
    """(maps line, bytes) of each writable region of process ``pid``: what it wrote."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if perms.startswith("rw"):
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(start)
                    yield line, mem.read(end - start)
                except (OSError, ValueError, OverflowError):
                    continue


#: What a command sees of its process, written to RESULT_DIR/seen.json; exits 3.
SEEN = "import json, os, re, resource, signal, sys\n" + inspect.getsource(writable_memory) + r'''
warm = "torch" in sys.modules
import torch
run_dir = os.path.dirname(os.environ["MODEL_DIR"])
def rel(value):
    return value.replace(run_dir, "RUN").replace(os.environ["TRAINING_ID"], "ID").replace(
        os.environ["WML_EXPERIMENT_ID"], "EXP")
mask = os.umask(0); os.umask(mask)
seen = {"env": {k: rel(v) for k, v in os.environ.items() if k != "MASTER_PORT"},  # MASTER_PORT: free, per run
        "cwd": rel(os.getcwd()), "argv": sys.argv,
        "file": rel(__file__), "path0": rel(sys.path[0]), "name": __name__, "umask": mask,
        "uid_is_root": os.getuid() == 0, "groups": os.getgroups(), "pgid_is_pid": os.getpgid(0) == os.getpid(),
        "limits": {n: resource.getrlimit(getattr(resource, n)) for n in dir(resource) if n.startswith("RLIMIT_")},
        "affinity": sorted(os.sched_getaffinity(0)), "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "signals": {s.name: str(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE,
                                                              signal.SIGCHLD, signal.SIGHUP)},
        "stdin": os.readlink("/proc/self/fd/0"), "cuda_initialized": torch.cuda.is_initialized(),
        "executable": sys.executable, "main_file": rel(sys.modules["__main__"].__file__)}
seen["secrets_in_own_memory"] = [m.decode() for _, region in writable_memory("self")
                                 for m in re.findall(rb"(?:planted|aws)-[0-9a-f]{32}", region)]
open(os.path.join(os.environ["RESULT_DIR"], "seen.json"), "w").write(json.dumps({"warm": warm, **seen}))
sys.exit(3)
'''


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A root backend (2 GPU slots) with secrets planted in its environment."""
    if os.geteuid() != 0:
        pytest.skip("runs get users of their own only from a root backend")
    proc = BackendProcess(tmp_path_factory.mktemp("warm") / "home", gpus=2, extra_env=PLANTED).start()
    yield proc
    proc.close()


def submit(host: BackendProcess, folder: Path, framework: str, code: str = SEEN) -> str:
    """Run ``code`` as train.py (``python3 train.py``) of ``framework``; its run's id once it ended."""
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(code)
    manifest = definition(folder, framework={"name": framework, "version": "2", "command": "python3 train.py"},
                          hyperparameters={"x": [1]})
    experiment = host.cli("train", str(manifest), str(folder), check=True).stdout.strip().splitlines()[-1]
    run_id = f"{experiment}-01"
    host.wait_state(run_id, "FAILED", timeout=180)
    return run_id


def seen(host: BackendProcess, run_id: str) -> dict:
    return json.loads((host.home / "storage" / "wml-results" / f"training-{run_id}" / "seen.json").read_text())


def test_a_warm_run_sees_exactly_what_a_cold_run_sees(host, tmp_path):
    cold_id, warm_id = submit(host, tmp_path / "cold", "custom"), submit(host, tmp_path / "warm", "pytorch")
    cold, warm = seen(host, cold_id), seen(host, warm_id)
    assert (cold.pop("warm"), warm.pop("warm")) == (False, True), "only the pytorch run started warm"
    for seen_by in (cold, warm):  # each as the user its runner leased: any free one of the host
        assert {seen_by["env"].pop(name).startswith("wml-run-") for name in ("USER", "LOGNAME")} == {True}
    assert warm["env"] == cold["env"]
    assert warm == cold
    assert warm["cuda_initialized"] is False and warm["uid_is_root"] is False and warm["secrets_in_own_memory"] == []
    for run_id in (cold_id, warm_id):
        run = host.cli_json("show", run_id)
        assert (run["exit_code"], run["reason"]) == (3, "the command exited with code 3")


def test_the_zygote_holds_no_secret(host, tmp_path):
    submit(host, tmp_path / "warm", "pytorch")
    folder = str(host.home / "backend" / "runs" / ".zygotes")
    [zygote] = [p for p in psutil.process_iter(["cwd", "cmdline"]) if p.info["cwd"] == folder
                and "torch" in (p.info["cmdline"] or [])]
    environ = Path(f"/proc/{zygote.pid}/environ").read_bytes()
    assert not [name for name in (*PLANTED, "WML_RUNNER_TOKEN", "WML_TOKEN", "WML_HOME") if name.encode() in environ]
    wanted = [s.encode() for s in (*PLANTED.values(), host.token)]
    for line, region in writable_memory(zygote.pid):
        assert not [s for s in wanted if s in region], f"a secret in the zygote's memory ({line.strip()})"


def test_a_framework_whose_import_fails_starts_cold_and_says_so(host, tmp_path):
    run_id = submit(host, tmp_path / "tf", "tensorflow")  # not installed here: its zygote cannot import it
    assert seen(host, run_id)["warm"] is False
    log = host.cli("logs", run_id, check=True).stdout
    assert "wml-runner: this run starts cold: importing tensorflow ahead of the run failed" in log


def test_commands_started_at_once_each_start_and_end_as_theirs(tmp_path):
    """Several runners asking one zygote at once (while it still imports) each get their command."""
    from concurrent.futures import ThreadPoolExecutor

    from wml_backend.executors.zygotes import Zygotes
    from wml_runner.command import Command, interpreter_env, passed_env
    from wml_runner.zygote import LINGER_S

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("import sys, time\ntime.sleep(0.2)\nsys.exit(int(sys.argv[1]))\n")
    zygotes = Zygotes(tmp_path / "runs", {"pytorch": ("json",)})
    socket = zygotes.socket_for("pytorch", "2", os.environ, 1)
    env = {**passed_env(os.environ, None), **interpreter_env(passed_env(os.environ, None), 1)}

    def run(code: int) -> int:
        return Command(f"python3 train.py {code}", env, tmp_path / "code", tmp_path / f"log-{code}.txt",
                       zygote=socket).run()
    try:
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(run, range(4))) == [0, 1, 2, 3]
        forks = (tmp_path / "runs" / ".zygotes").glob("*.log")
        assert sum(log.read_text().count("zygote: forked") for log in forks) == 4
        [zygote] = [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(tmp_path / "runs" / ".zygotes")]
    finally:
        zygotes.close()
    zygote.wait(timeout=LINGER_S + 30)  # it stops with its executor (serving a while for runners on their way)


def test_only_python_running_a_script_with_nothing_for_bash_to_expand_starts_warm(tmp_path):
    from wml_runner.zygote import warm_argv

    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    assert warm_argv("python3 train.py --lr 0.1 --name 'a b'", env, tmp_path) == [
        "python3", "train.py", "--lr", "0.1", "--name", "a b"]
    for cold in ("python3 train.py | tee out", "FOO=1 python3 train.py", "python3 -u train.py", "bash run.sh",
                 "python3 train.py --data ${DATA_DIR}", "python3 train.py; echo done", "python3 t*.py",
                 "/usr/bin/env python3 train.py", "python3"):
        assert warm_argv(cold, env, tmp_path) is None, cold
