"""How a run's command enters its sandbox, both ways (#15 item 1: a faster start; #13: the same
boundary): through ``wml-enter``, the helper the local executor builds, which a runner spawns with
vfork; and through a fork of the runner that runs ``Sandbox.preexec`` (where no helper is built).
The command sees the same either way; the run's environment never reaches the helper while it is
root; the command dies with its runner; a step that fails says why in one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from wml_runner import enter, isolation
from wml_runner.isolation import Sandbox

#: What a command sees of itself and of the host (``COVERED``: a folder it may not see whole).
SEES = r'''
echo "ids $(id -u) $(id -g) groups $(id -G)"
echo "umask $(umask) cwd $(pwd) argv0 $0"
grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd|Seccomp):' /proc/self/status
echo "covered folder shows: $(ls -A "$COVERED")"
echo "the root test process visible: $(test -e /proc/$ROOT_PID && echo yes || echo no)"
echo "mounts:"; awk '{print $5}' /proc/self/mountinfo | sort
echo "environment:"; env | sort
exit 7
'''

WAYS = ["helper", "preexec"]


@pytest.fixture(scope="module")
def user():
    """A leased run user (made if need be), held for the module."""
    if os.geteuid() != 0:
        pytest.skip("commands start as a user of their own only from root")
    leased, lease = isolation.lease_user()
    yield leased
    isolation.kill_user(leased)
    os.close(lease)


@pytest.fixture(scope="module")
def helper() -> Path:
    built, why = enter.build()
    assert built is not None, why  # the machines this runs on have a C compiler
    return built


def sandbox(way: str, user, helper: Path, run_dir: Path) -> Sandbox:
    """The sandbox of a run whose folder is ``run_dir``, entered ``way``."""
    return Sandbox(user, (*isolation.runtime_paths(), run_dir.resolve()), helper if way == "helper" else None)


@pytest.fixture
def run_dir(tmp_path, user) -> Path:
    """A run's folder, the user's, under a folder it cannot pass (so it is covered)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    folder = private / "run"
    folder.mkdir()
    os.chown(folder, user.uid, user.gid)
    return folder


def start(box: Sandbox, command: str, env: dict[str, str], cwd: Path, **popen) -> subprocess.Popen:
    """``bash -c COMMAND`` in ``box``, as a runner starts it."""
    return box.popen(["bash", "-c", command], env, cwd, stdin=subprocess.DEVNULL, process_group=0, **popen)


def test_a_command_sees_the_same_whichever_way_it_entered_its_sandbox(user, helper, run_dir):
    env = {"PATH": os.environ["PATH"], "HOME": str(run_dir), "COVERED": str(run_dir.parent.parent),
           "ROOT_PID": str(os.getpid()), "HPARAM": "a value with spaces = and 'quotes'"}
    seen = {}
    for way in WAYS:
        done = start(sandbox(way, user, helper, run_dir), SEES, env, run_dir, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)
        out, _ = done.communicate(timeout=30)
        seen[way] = (done.returncode, out)
    assert seen["helper"] == seen["preexec"]
    code, out = seen["helper"]
    assert code == 7, out
    assert f"ids {user.uid} {user.gid} groups {user.gid}\n" in out
    assert f"umask 0077 cwd {run_dir} argv0 bash\n" in out
    assert "NoNewPrivs:\t1" in out and "CapEff:\t0000000000000000" in out
    assert "covered folder shows: private\n" in out, "only the way to the run's folder"
    assert "the root test process visible: no" in out
    assert "HPARAM=a value with spaces = and 'quotes'\n" in out


def test_the_runs_environment_is_in_no_processs_arguments(user, helper, run_dir, monkeypatch):
    """Anyone may read a process's arguments in /proc: the helper's hold none of the run's
    environment (its credentials), which the command still gets."""
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kw: started.append(args) or real_popen(args, **kw))
    env = {"PATH": os.environ["PATH"], "AWS_SECRET_ACCESS_KEY": "s3cr3t-of-the-run"}
    box = sandbox("helper", user, helper, run_dir)
    got_it = f'test "${{#AWS_SECRET_ACCESS_KEY}}" = {len(env["AWS_SECRET_ACCESS_KEY"])}'  # its length: not itself
    assert start(box, got_it, env, run_dir).wait(30) == 0
    assert started and not any("s3cr3t" in arg for args in started for arg in args)


def test_the_runs_environment_never_reaches_the_helper_while_it_is_root(user, helper, run_dir, tmp_path):
    """A run sets ``LD_PRELOAD`` to a library of its own: only its command, as its user, loads it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    source, library = tmp_path / "evil.c", run_dir / "evil.so"
    source.write_text(textwrap.dedent(f'''
        #include <stdio.h>
        #include <unistd.h>
        __attribute__((constructor)) static void loaded(void) {{
            FILE *f = fopen("{run_dir}/loaded-as.txt", "a");
            if (f) {{ fprintf(f, "%d\\n", (int)getuid()); fclose(f); }}
        }}
    '''))
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    os.chmod(library, 0o755)
    env = {"PATH": os.environ["PATH"], "LD_PRELOAD": str(library), "LD_LIBRARY_PATH": str(run_dir)}
    for way in WAYS:
        assert start(sandbox(way, user, helper, run_dir), "true", env, run_dir).wait(30) == 0
        loaded_as = (run_dir / "loaded-as.txt").read_text().split()
        assert loaded_as and set(loaded_as) == {str(user.uid)}, f"{way}: loaded as {loaded_as}"
        (run_dir / "loaded-as.txt").unlink()


RUNNER = r'''
import os, subprocess, sys
from pathlib import Path
from wml_runner.isolation import RunUser, Sandbox
uid, gid, name, run_dir, helper = sys.argv[1:6]
box = Sandbox(RunUser(name, int(uid), int(gid)), (Path(run_dir),), Path(helper) if helper else None)
command = box.popen(["bash", "-c", "exec sleep 600"], {"PATH": os.environ["PATH"]}, Path(run_dir), process_group=0)
print(command.pid, flush=True)
sys.stdin.read(1)
os._exit(0)
'''


@pytest.mark.parametrize("way", WAYS)
def test_a_command_is_killed_when_its_runner_dies(user, helper, run_dir, way):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(user.uid), str(user.gid), user.name, str(run_dir),
                               str(helper) if way == "helper" else ""], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    command = psutil.Process(int(runner.stdout.readline()))
    deadline = time.monotonic() + 10
    while command.username() != user.name or command.name() != "sleep":  # it has become the user's command
        assert time.monotonic() < deadline, (command.username(), command.name())
        time.sleep(0.01)
    runner.stdin.write("x")
    runner.stdin.close()
    runner.wait(10)
    command.wait(10)  # it would sleep 600 s had the runner's death not killed it


def test_a_step_that_fails_says_why_in_one_line_and_runs_nothing(user, helper, run_dir, tmp_path):
    gone = tmp_path / "private" / "gone"  # under the covered folder, so the helper opens it: it is not there
    box = Sandbox(user, (run_dir.resolve(), gone), helper)
    log = tmp_path / "log.txt"
    with open(log, "wb") as out:
        code = start(box, f"touch {run_dir}/ran", {"PATH": os.environ["PATH"]}, run_dir, stdout=out,
                     stderr=subprocess.STDOUT).wait(30)
    assert code == 125
    assert log.read_text() == (f"wml-runner: cannot start the command as {user.name}: open {gone}: "
                               "No such file or directory\n")
    assert not (run_dir / "ran").exists()


def test_a_helper_others_could_have_changed_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr(enter, "SOURCE", tmp_path / "enter.c")
    shutil.copy(Path(isolation.__file__).with_name("enter.c"), enter.SOURCE)
    built, why = enter.build()
    if built is None:
        pytest.skip(f"the helper cannot be built here: {why}")
    built.parent.chmod(0o777)
    assert enter.build() == (None, f"{built.parent} is writable by others than its owner, or not this user's")


def test_without_a_c_compiler_there_is_no_helper_and_it_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(enter, "SOURCE", tmp_path / "enter.c")
    shutil.copy(Path(isolation.__file__).with_name("enter.c"), enter.SOURCE)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert enter.build() == (None, "this host has no C compiler (cc)")
    assert not enter.built_path().exists()
