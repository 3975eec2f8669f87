"""Training code against its runner, its backend and the other runs of its machine (issue #13,
items 1 and 4), through a real backend, real runners and the local executor, which runs each
run's command as a user of its own (``wml_runner.isolation``).

The attacker is training code: it reads every process's environment and memory it can open,
the backend's files under ``$WML_HOME`` and another account's run folder, and the tests assert
that it got nothing and that no output of the run holds a planted secret. The runner protocol is
attacked with tokens the test steals as root from the runner's memory (which a run's own user
cannot read): the backend refuses a QUEUED report, keeps billing (and holding the GPU of) a run
that says COMPLETED while it trains until its process has ended, and refuses an attempt's token
once that attempt is over.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest

from backend_process import BackendProcess
from test_cli_e2e import definition
from wml_backend.accounts import Accounts
from wml_backend.daemon import parser, settings_from
from wml_backend.tokens import token_hash
from wml_backend.rundb import Account, SqliteRunStore
from wml_backend.settings import Settings
from wml_core.errors import Conflict
from wml_core.models import AccountLimits


#: Secrets planted in the backend's environment: no run output may hold them.
PLANTED = {"WML_PLANTED_SECRET": f"planted-{secrets.token_hex(16)}",
           "AWS_SECRET_ACCESS_KEY": f"aws-{secrets.token_hex(16)}"}
#: What a runner token looks like (``tokens.new_runner_token``: 32 URL-safe characters), alone.
TOKEN_LIKE = re.compile(rb"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32}(?![A-Za-z0-9_-])")
#: Seconds the local executor gives a runner that reported its end before it is killed.
GRACE_S = 10.0

#: Training code that tries to read what it must not, and writes what it got to attack.json.
ATTACK = r'''
import json, os, sys
from pathlib import Path
from wml_jupyter import run

hp = run.hparams()
found = {"uid": os.getuid(), "groups": os.getgroups(), "ppid": os.getppid(), "env": dict(os.environ),
         "reads": {}, "owners": {}, "warm": "torch" in sys.modules}


def attempt(name, read):
    try:
        data = read()
        found["reads"][name] = data.decode("latin-1") if isinstance(data, bytes) else data
    except Exception as exc:
        found["reads"][name] = "refused: " + type(exc).__name__


def memory(pid):
    with open(f"/proc/{pid}/maps") as maps:
        start, end = (int(x, 16) for x in maps.readline().split()[0].split("-"))
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(start)
        return mem.read(min(end - start, 1 << 20))


def listing(path):
    return "\n".join(sorted(os.listdir(path))) if os.path.isdir(path) else open(path, "rb").read()


for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        found["owners"][pid] = int(open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0])
    except (OSError, IndexError):
        continue
    attempt(f"/proc/{pid}/environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
    attempt(f"/proc/{pid}/mem", lambda: memory(pid))
home, victim = hp["home"], hp["victim"]
for path in [f"{home}/backend/{name}" for name in ("wml.db", "secrets.key", "token")] + [
        home, f"{home}/backend", f"{victim}/results/private.txt", f"{victim}/runner.log", victim]:
    attempt(path, lambda: listing(path))
(Path(os.environ["RESULT_DIR"]) / "attack.json").write_text(json.dumps(found))
print(json.dumps(found))
'''

#: Training code of another account, holding a secret in its environment and its results.
VICTIM = r'''
import os, time
from pathlib import Path
from wml_jupyter import run
results = Path(os.environ["RESULT_DIR"])
(results / "private.txt").write_text(run.hparams()["secret"])
(results / "uid.txt").write_text(str(os.getuid()))
for step in range(1, int(run.hparams()["steps"]) + 1):
    run.log(step=step, loss=1.0 / step)
    time.sleep(0.1)
'''

#: Training code that exits 1 on its first attempt and 0 on the next, each after ``sleep`` s.
FLAKY = r'''
import os, sys, time
from wml_jupyter import run
time.sleep(float(run.hparams()["sleep"]))
sys.exit(1 if os.environ["WML_ATTEMPT"] == "1" else 0)
'''


@pytest.fixture(scope="module", params=["cold", "warm"])
def host(tmp_path_factory, request):
    """A backend with secrets planted in its environment (2 GPU slots); runs get users of their
    own only from a root backend. Warm: runs are of framework pytorch, so they start forked from
    an interpreter that imported torch (``wml_runner.zygote``); cold: of a framework without one."""
    if os.geteuid() != 0:
        pytest.skip("runs get users of their own only from a root backend")
    proc = BackendProcess(tmp_path_factory.mktemp("isolation") / "home", gpus=2, extra_env=PLANTED).start()
    proc.framework = "pytorch" if request.param == "warm" else "custom"
    yield proc
    proc.close()


def account(backend: BackendProcess, gpus: int = 1) -> str:
    """A new account's token."""
    name = f"acct{secrets.token_hex(3)}"
    return backend.cli("accounts", "create", name, "--gpus", str(gpus), check=True).stdout.strip().splitlines()[-1]


def submit_code(backend: BackendProcess, folder: Path, code: str, token: str, hparams: dict,
                command: str = "python3 train.py", **changes) -> str:
    """Submit ``code`` as train.py, run by ``command``, with one value of each of ``hparams`` (and
    ``changes`` to the manifest); its (only) run's id."""
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(code)
    manifest = definition(folder, framework={"name": backend.framework, "command": command},
                          hyperparameters={k: [v] for k, v in hparams.items()}, **changes)
    result = backend.cli("train", str(manifest), str(folder), token=token, check=True)
    return f"{result.stdout.strip().splitlines()[-1]}-01"


def written(path: Path, timeout: float = 30.0) -> str:
    """The text of ``path`` once a run has written it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.1)
    return path.read_text()


def runner_of(backend: BackendProcess, run_id: str) -> psutil.Process:
    """The run's runner process (it works in the run's folder)."""
    run_dir = str(backend.home / "backend" / "runs" / run_id)
    for proc in psutil.process_iter(["cwd"]):
        if proc.info["cwd"] == run_dir:
            return proc
    raise AssertionError(f"no runner of {run_id}")


def commands_of(backend: BackendProcess, run_id: str) -> list[psutil.Process]:
    """The run's command processes (they work in its code's folder): a warm start's are not its
    runner's children."""
    model = str(backend.home / "backend" / "runs" / run_id / "model")
    return [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == model]


def stored(backend: BackendProcess, run_id: str):
    """The run as the backend's store has it (its token's hash, its reported end...)."""
    store = SqliteRunStore(backend.home / "backend" / "wml.db")
    try:
        return store.run(run_id)
    finally:
        store.close()


def steal_token(backend: BackendProcess, run_id: str) -> str:
    """The run's runner token, read as root from its runner's memory (what no run can do)."""
    return token_in_memory(runner_of(backend, run_id).pid, stored(backend, run_id).runner_token_hash, run_id)


def token_in_memory(pid: int, wanted: str, run_id: str) -> str:
    """The token whose hash is ``wanted``, read as root from the memory of process ``pid``."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("rw"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                region = mem.read(end - start)
            except OSError:
                continue
            for match in TOKEN_LIKE.finditer(region):
                if token_hash(match.group().decode()) == wanted:
                    return match.group().decode()
    raise AssertionError(f"the token of {run_id} is not in its runner's memory")


def alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs (a zombie does not)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def report(backend: BackendProcess, run_id: str, token: str, state: str) -> httpx.Response:
    """POST a state report as the run's runner would."""
    return httpx.post(f"{backend.url}/v1/runner/{run_id}/state", json={"state": state},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)


def show(backend: BackendProcess, run_id: str, token: str) -> dict:
    return backend.cli_json("show", run_id, token=token)


def ended_at(run: dict) -> float:
    return datetime.fromisoformat(run["transitions"][-1]["time"]).timestamp()


def started_at(run: dict) -> float:
    return next(datetime.fromisoformat(t["time"]).timestamp() for t in run["transitions"] if t["state"] == "PENDING")


def outputs(backend: BackendProcess, run_id: str, token: str) -> bytes:
    """Everything a run's account can get of it: its record, log, metrics and stored results."""
    parts = [backend.cli("show", run_id, "--json", token=token).stdout, backend.cli("logs", run_id, token=token).stdout,
             backend.cli("metrics", run_id, "--json", token=token).stdout]
    results = backend.home / "storage" / "wml-results" / f"training-{run_id}"
    return "\n".join(parts).encode() + b"".join(p.read_bytes() for p in results.rglob("*") if p.is_file())


# -- item 4 and item 1's first half: nothing to read ---------------------------------------------
def test_training_code_reads_no_credential_of_its_runner_its_backend_or_another_account(host, tmp_path):
    ann, bo = account(host), account(host)
    victim_secret = f"ann-private-{secrets.token_hex(16)}"
    victim = submit_code(host, tmp_path / "victim", VICTIM, ann, {"secret": victim_secret, "steps": 300})
    host.wait_state(victim, "PROCESSING", token=ann)
    victim_hash = stored(host, victim).runner_token_hash
    attacker = submit_code(host, tmp_path / "attacker", ATTACK, bo, {
        "home": str(host.home), "victim": str(host.home / "backend" / "runs" / victim)})
    host.wait_state(attacker, "COMPLETED", token=bo)
    host.cli("cancel", victim, token=ann, check=True)
    host.wait_state(victim, "HALTED", token=ann)

    results = host.home / "storage" / "wml-results"
    found = json.loads((results / f"training-{attacker}" / "attack.json").read_text())
    victim_uid = int((results / f"training-{victim}" / "uid.txt").read_text())
    assert found["warm"] == (host.framework == "pytorch"), "a warm run forked from the zygote, a cold one not"
    assert found["uid"] not in (0, os.getuid(), victim_uid) and found["groups"] == []
    assert not {"WML_RUNNER_TOKEN", "WML_BACKEND_URL", "WML_HOME", *PLANTED} & set(found["env"]), found["env"]
    read = {name: text for name, text in found["reads"].items() if not text.startswith("refused: ")}
    foreign = [name for name in read if name.startswith("/proc/")
               and found["owners"][name.split("/")[2]] != found["uid"]]
    assert foreign == [], f"read another user's process: {foreign}"
    assert f"/proc/{found['ppid']}/environ" not in read, "the runner's environment"
    files = {name: text for name, text in read.items() if not name.startswith("/proc/")}
    home = str(host.home)
    assert files == {k: v for k, v in {home: "backend", f"{home}/backend": "runs"}.items() if k in files}, \
        f"$WML_HOME shows more than the way to the run's own folder, or ann's run is readable: {files}"

    leaked = outputs(host, attacker, bo)
    for secret in (*PLANTED.values(), host.token, ann, bo, victim_secret):
        assert secret.encode() not in leaked
    assert not any(token_hash(t.decode()) == victim_hash for t in TOKEN_LIKE.findall(leaked))


def test_the_command_runs_as_a_user_of_its_own_with_its_gpus_and_its_exit_code(host, tmp_path):
    token = account(host)
    run_id = submit_code(host, tmp_path / "code", "import os, sys\n"
                         "print('uid', os.getuid(), 'gpus', os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
                         "open(os.environ['RESULT_DIR'] + '/home.txt', 'w').write(os.environ['HOME'])\n"
                         "sys.exit(3)\n", token, {"x": 1})
    run = host.wait_state(run_id, "FAILED", token=token)
    assert run["exit_code"] == 3 and "code 3" in run["reason"]
    line = next(line for line in run["log_tail"] if line.startswith("uid "))
    assert int(line.split()[1]) not in (0, os.getuid()) and line.split()[3] in ("0", "1")
    home = (host.home / "storage" / "wml-results" / f"training-{run_id}" / "home.txt").read_text()
    assert home == str(host.home / "backend" / "runs" / run_id / "home")


#: Training code that notes what each of its open file descriptors is, to fds.json, then waits.
DESCRIPTORS = r'''
import json, os, time
from pathlib import Path
fds = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")}
(Path(os.environ["RESULT_DIR"]) / "fds.json").write_text(json.dumps(fds))
time.sleep(60)
'''


def test_training_code_holds_no_end_of_its_runners_pipe_to_the_backend(host, tmp_path):
    """The runner calls the backend over a pipe (``wml_runner.channel``) that the command must not
    reach: it would talk to the backend as its runner, or read the runner's answers."""
    token = account(host)
    run_id = submit_code(host, tmp_path / "code", DESCRIPTORS, token, {"x": 1})
    host.wait_state(run_id, "PROCESSING", token=token)
    fds = json.loads(written(host.home / "backend" / "runs" / run_id / "results" / "fds.json"))
    runners = {os.readlink(f"/proc/{runner_of(host, run_id).pid}/fd/{fd}")
               for fd in os.listdir(f"/proc/{runner_of(host, run_id).pid}/fd")}
    host.cli("cancel", run_id, token=token, check=True)
    pipes = {target for target in runners if target.startswith("socket:")}
    assert pipes, "the runner holds its pipe (a socket) while the run trains"
    assert not pipes & set(fds.values()), f"the command holds its runner's pipe: {fds}"
    assert {"0", "1", "2"} <= set(fds) and not [t for t in fds.values() if t.startswith("socket:")], fds


# -- item 1's second half: the protocol trusts a runner only with its own run's progress -----------
def test_a_run_reporting_queued_with_its_token_is_refused_and_runs_once(host, tmp_path):
    token = account(host)
    run_id = submit_code(host, tmp_path / "code", VICTIM, token, {"secret": "x", "steps": 30})
    host.wait_state(run_id, "PROCESSING", token=token)
    stolen = steal_token(host, run_id)
    for state in ("QUEUED", "PENDING", "STOPPED", "DOWNLOADING"):
        refused = report(host, run_id, stolen, state)
        assert refused.status_code == 409, (state, refused.text)
    run = host.wait_state(run_id, "COMPLETED", token=token)
    states = [t["state"] for t in run["transitions"]]
    assert states == ["QUEUED", "PENDING", "DOWNLOADING", "PROCESSING", "STORING", "COMPLETED"], states


def test_a_run_saying_completed_while_it_trains_keeps_its_gpu_and_is_billed_until_its_process_ends(host, tmp_path):
    token = account(host, gpus=1)
    first = submit_code(host, tmp_path / "first", VICTIM, token, {"secret": "x", "steps": 600})
    second = submit_code(host, tmp_path / "second", VICTIM, token, {"secret": "y", "steps": 1})
    host.wait_state(first, "PROCESSING", token=token)
    training = runner_of(host, first).children(recursive=True) or commands_of(host, first)
    said_at = time.time()
    assert report(host, first, steal_token(host, first), "COMPLETED").status_code == 200
    time.sleep(3)
    assert show(host, first, token)["state"] == "PROCESSING", "a runner's word does not end its run"
    assert show(host, second, token)["state"] == "QUEUED", "its GPU is still held"
    assert show(host, first, token)["gpu_seconds"] >= time.time() - said_at - 0.5
    run = host.wait_state(first, "COMPLETED", timeout=GRACE_S + 20, token=token)
    assert ended_at(run) - said_at >= GRACE_S - 0.5, "killed after the grace, not before"
    assert training and not [p for p in training if alive(p)], "its training process outlived the run"
    assert run["gpu_seconds"] == pytest.approx(ended_at(run) - started_at(run), abs=0.05)
    assert started_at(host.wait_state(second, "COMPLETED", token=token)) >= ended_at(run)


def test_an_attempts_token_moves_nothing_once_the_attempt_is_over(host, tmp_path):
    token = account(host)
    run_id = submit_code(host, tmp_path / "code", FLAKY, token, {"sleep": 8}, max_retries=1)
    host.wait_state(run_id, "PROCESSING", token=token)
    first = steal_token(host, run_id)
    deadline = time.monotonic() + 60
    while (run := show(host, run_id, token))["attempt"] != 2 or run["state"] != "PROCESSING":
        assert time.monotonic() < deadline, f"attempt 2 did not start: {run['state']}"
        time.sleep(0.1)
    assert report(host, run_id, first, "STORING").status_code == 401, "attempt 1's token moved attempt 2"
    second = steal_token(host, run_id)
    host.wait_state(run_id, "COMPLETED", token=token)
    assert report(host, run_id, second, "FAILED").status_code == 401, "a token outlived its attempt"
    assert show(host, run_id, token)["state"] == "COMPLETED"


# -- a backend that cannot keep runs apart -----------------------------------------------------
def test_a_second_account_is_refused_where_runs_cannot_be_kept_apart_unless_trusted(tmp_path):
    gap = "the backend does not run as root, so it cannot run each run as a user of its own"
    store = SqliteRunStore(tmp_path / "wml.db")
    admin = Account(name="local", admin=True, gpu_quota=1)
    try:
        with pytest.raises(Conflict) as refused:
            Accounts(Settings(home=tmp_path), store, lambda *_: None, gap).create(admin, "alice", AccountLimits(gpus=1))
        said = str(refused.value)
        assert "\n" not in said and gap in said and "--trusted-accounts" in said
        trusted = settings_from(parser().parse_args(["serve", "--trusted-accounts"]))
        assert trusted.trusted_accounts
        created = Accounts(Settings(home=tmp_path, trusted_accounts=True), store, lambda *_: None, gap).create(
            admin, "alice", AccountLimits(gpus=1))
        assert created.name == "alice"
    finally:
        store.close()
