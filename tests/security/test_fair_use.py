"""Fair use (issue 13, item 6), tried through the real backend and the ``wml`` CLI.

Before: an account with no GPUs took every run slot with CPU-only runs (its share of a quota of
0 was always 0, so its older runs won every free slot), nothing bounded what an account queued,
and an administrator could neither change, disable nor re-key an account.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest
from backend_process import TINY, BackendProcess, tiny_manifest
from checks import assert_clear



@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A backend with one GPU and two run slots, for accounts that compete."""
    proc = BackendProcess(tmp_path_factory.mktemp("fair") / "wml-home", gpus=1, slots=2).start()
    yield proc
    proc.close()


manifest = tiny_manifest


def create(proc: BackendProcess, name: str, *flags: str) -> str:
    """A new account's token, as ``wml accounts create`` prints it on its last line."""
    return proc.cli("accounts", "create", name, *flags, check=True).stdout.strip().splitlines()[-1]


def train(proc: BackendProcess, path: Path, token: str):
    return proc.cli("train", str(path), str(TINY), token=token)


#: Tokens of the accounts several tests share, by name.
TOKENS: dict[str, str] = {}


def create_once(proc: BackendProcess, name: str, *flags: str) -> None:
    """Create account ``name`` unless an earlier test did; its token goes in TOKENS."""
    if name not in TOKENS:
        TOKENS[name] = create(proc, name, *flags)


def wait_started(proc: BackendProcess, experiment: str, token: str, count: int) -> None:
    """Wait until ``count`` runs of the experiment have left the queue."""
    deadline = time.monotonic() + 60
    while sum(r["state"] != "QUEUED" for r in proc.cli_json("list", "--experiment", experiment, token=token)) < count:
        assert time.monotonic() < deadline, f"{count} runs of {experiment} did not start"
        time.sleep(0.2)


def pending_time(run: dict) -> float:
    return next(datetime.fromisoformat(t["time"]).timestamp() for t in run["transitions"] if t["state"] == "PENDING")


def stored_states(proc: BackendProcess, account: str) -> list[str]:
    """The states of an account's runs as the database holds them (an administrator cannot list them)."""
    with closing(sqlite3.connect(f"file:{proc.home / 'backend' / 'wml.db'}?mode=ro", uri=True)) as db:
        return [s for (s,) in db.execute("SELECT state FROM runs WHERE account=? ORDER BY seq", (account,))]


def test_an_account_without_gpus_cannot_keep_a_gpu_account_waiting(shared, tmp_path):
    cpu = create(shared, "cpuhog", "--gpus", "0")
    gpu = create(shared, "gpuuser", "--gpus", "1")
    hog = train(shared, manifest(tmp_path, gpus=0, hyperparameters={"lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                                                                      "steps": [1], "sleep": [2]}), cpu)
    assert hog.returncode == 0, hog.stderr
    wait_started(shared, hog.stdout.split()[-1], cpu, 2)  # the hog holds both slots, 4 runs wait
    fair = train(shared, manifest(tmp_path, hyperparameters={"lr": [0.1], "steps": [1]}), gpu)
    assert fair.returncode == 0, fair.stderr
    gpu_run = shared.wait_experiment(fair.stdout.split()[-1], token=gpu, timeout=120)
    assert gpu_run["runs"] == {"COMPLETED": 1}
    shared.wait_experiment(hog.stdout.split()[-1], token=cpu, timeout=120)
    started = pending_time(shared.cli_json("show", f"{fair.stdout.split()[-1]}-01", token=gpu))
    cpu_runs = shared.cli_json("list", "--experiment", hog.stdout.split()[-1], token=cpu)
    later = sum(pending_time(r) > started for r in cpu_runs)
    assert later >= 3, f"the GPU account's run started after {6 - later} of the 6 CPU-only runs"


def test_a_submission_beyond_the_queue_limit_is_refused_with_one_line(shared, tmp_path):
    token = create(shared, "queuer", "--gpus", "0", "--slots", "1", "--max-queued", "2")
    runs = manifest(tmp_path, gpus=0, hyperparameters={"lr": [0.1, 0.2], "steps": [1], "sleep": [20]})
    assert train(shared, runs, token).returncode == 0
    refused = train(shared, runs, token)
    assert refused.returncode == 2
    assert_clear(refused.stderr, ("at most 2 runs queued", "queuer"))
    assert len(stored_states(shared, "queuer")) == 2, "the refused experiment left runs"


@pytest.mark.parametrize("changes, problem", [
    ({"cpus": 4096}, "asks for 4096 CPUs but account 'boxed' may hold at most 2"),
    ({"memory": "64Gi"}, "asks for 64 GiB of memory but account 'boxed' may hold at most 1 GiB"),
])
def test_a_run_larger_than_its_account_may_hold_is_refused_at_submit(shared, tmp_path, changes, problem):
    """A run asking for cpus: 4096 was admitted and stayed PENDING for ever, holding its slot."""
    create_once(shared, "boxed", "--gpus", "1", "--cpus", "2", "--memory", "1Gi")
    refused = train(shared, manifest(tmp_path, hyperparameters={"lr": [0.1]}, **changes), TOKENS["boxed"])
    assert refused.returncode == 2
    assert_clear(refused.stderr, (problem,))


def test_a_disabled_accounts_tokens_stop_at_once_and_its_queue_is_halted(shared, tmp_path):
    token = create(shared, "leaver", "--gpus", "0", "--slots", "1")
    runs = manifest(tmp_path, gpus=0, hyperparameters={"lr": [0.1, 0.2, 0.3], "steps": [1], "sleep": [20]})
    assert train(shared, runs, token).returncode == 0
    assert shared.cli("list", token=token).returncode == 0
    done = shared.cli("accounts", "disable", "leaver")
    assert done.returncode == 0 and "disabled" in done.stdout
    refused = shared.cli("list", token=token)
    assert refused.returncode == 2
    assert_clear(refused.stderr, ("disabled",))
    deadline = time.monotonic() + 10
    while stored_states(shared, "leaver").count("HALTED") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    states = stored_states(shared, "leaver")
    assert states.count("HALTED") >= 2 and "QUEUED" not in states, states


def test_a_rotated_token_replaces_the_old_one_at_once(shared):
    old = create(shared, "rekeyed", "--gpus", "1")
    rotated = shared.cli("accounts", "rotate-token", "rekeyed")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    assert new != old and shared.cli("list", token=new).returncode == 0
    assert shared.cli("list", token=old).returncode == 2


def test_update_changes_only_the_limits_given_and_prints_them(shared):
    create(shared, "tuned", "--gpus", "1", "--slots", "4")
    changed = shared.cli("accounts", "update", "tuned", "--cpus", "8", "--memory", "16Gi")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == "account tuned: gpus 1, slots 4, cpus 8, memory 16 GiB, max queued 10000"


@pytest.mark.parametrize("argv, problem", [
    (["accounts", "update", "nobody", "--slots", "2"], "no account 'nobody'"),
    (["accounts", "disable", "local"], "is an administrator"),
    (["accounts", "update", "x", "--memory", "lots"], "not a memory size"),
    (["accounts", "update", "x", "--slots", "0"], "not between 1 and 10000"),
    (["accounts", "rotate-token", "../experiments"], "not an account name"),
    (["accounts", "update", "x", "--cpus", "-1"], "not between 0 and 1000000"),
])
def test_bad_account_commands_are_one_line_and_exit_2(shared, argv, problem):
    result = shared.cli(*argv)
    assert result.returncode == 2
    assert_clear(result.stderr, (problem,))


@pytest.mark.parametrize("action", [["update", "local", "--gpus", "64"], ["disable", "local"],
                                    ["rotate-token", "local"], ["create", "mine", "--gpus", "64"]])
def test_only_an_administrator_manages_accounts(shared, action):
    create_once(shared, "plain", "--gpus", "1")
    result = shared.cli("accounts", *action, token=TOKENS["plain"])
    assert result.returncode == 2
    assert_clear(result.stderr, ("only an administrator",))
    assert shared.cli("list").returncode == 0, "the administrator's token still works"
