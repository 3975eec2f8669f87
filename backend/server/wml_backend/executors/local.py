"""The local executor: each run's runner is a subprocess of this host."""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import psutil

from wml_core.private_files import write_private
from wml_backend.executors.base import Capacity, Executor, Launch, RunnerCallCallback
from wml_backend.executors.zygotes import Zygotes
from wml_core.runner_channel import (ASKED_AT_LAUNCH, MAX_CALL_BYTES, ChannelCall, answer_status, encode_call,
                                     is_call, last_word, last_word_counts)
from wml_runner import enter
from wml_runner.isolation import POOL, RUN_USER_ENV, harden_runner, isolation_gap
from wml_runner.reporter import warm_up
from wml_runner.workspace import Workspace, rehearse
from wml_runner.zygote import FRAMEWORK_MODULES, ZYGOTE_ENV

log = logging.getLogger("wml_backend")

#: How often a re-attached runner (not our child) is checked for exit.
REATTACH_POLL_S = 0.2
#: The folder (in the work folder, unless ``runner_notes`` finds one in memory) where each runner
#: started is noted, ``<run id>.json`` holding its handle, until it ends: a backend started later
#: finds there the runners of runs that ended while it was down (``reconcile``).
RUNNERS = ".runners"
#: Where ``runner_notes`` looks first for a folder of this user's: file systems in memory. A note
#: is written in every run's start and deleted at its end, and is of a process, which ends with
#: the host too: on a disk, each is a journaled write (~1 ms in a sweep of short runs).
NOTES_PARENTS = (Path("/run"), Path("/dev/shm"))
#: Idle runners a start tries before it fails (one that died while idle is passed over).
LAUNCH_TRIES = 3
#: The folder (in the work folder) where each idle runner makes the folders of its run ahead
#: (``Workspace.make_ahead``), in one of its own that becomes the run's at its launch.
MADE_AHEAD = ".made-ahead"
#: The runner's own log, in its run's folder (where its stdout and stderr go).
RUNNER_LOG = "runner.log"


def runner_notes(work_dir: Path) -> Path:
    """The folder where the local executor of ``work_dir`` notes its runners (``RUNNERS``): one of
    this user's alone in memory (``NOTES_PARENTS``), else in the work folder."""
    digest = hashlib.sha256(os.fsencode(Path(work_dir).resolve())).hexdigest()[:16]
    for parent in NOTES_PARENTS:
        mine = parent / f"wml-runners-{os.geteuid()}"
        try:
            mine.mkdir(mode=0o700, exist_ok=True)
            info = mine.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077:
                (mine / digest).mkdir(mode=0o700, exist_ok=True)
                return mine / digest
        except OSError:
            continue
    return Path(work_dir) / RUNNERS  # (where another user made that folder first, say)


def detect_gpus() -> int:
    """Number of NVIDIA GPUs on this host (0 when there is no driver)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


#: Runners are forked from a server that has already imported the runner, so starting one
#: costs milliseconds instead of a Python start-up and its imports. (The daemon too, as the
#: server's main module: ``runner_server``; this module, a runner's entry; the runner's preload
#: last: it freezes what is imported.)
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["wml_backend.executors.runner_server", __name__, "wml_runner.preload"])


#: The launch variable holding the runner's token: handed to the forked runner in the process
#: (it reaches no environment, so no ``/proc/<pid>/environ``).
TOKEN_ENV = "WML_RUNNER_TOKEN"


#: Runners kept forked ahead, idle, so that a start finds one ready (``IdleRunners``): one per
#: slot, so that a wave of starts (an experiment's first) finds one each rather than waiting
#: for forks, but no more than this many (each holds ~8 MB of its own).
IDLE_RUNNERS = 8
#: Taken runners are forked again once no start has taken one for this long (but never later
#: than ``REFILL_LATEST_S`` after it was asked): a wave of starts takes runners one after another,
#: and forking their replacements meanwhile slows the runners just launched.
REFILL_QUIET_S, REFILL_LATEST_S = 0.05, 0.5


def _idle_runner(channel: Connection, workspace: Optional[str]) -> None:
    """Body of an idle runner: made ready with no run in view (hardened first, then warm, the
    folders of its run made at ``workspace``), it waits on its pipe for one launch and runs it
    (``_run_runner``), calling the API over the pipe when the executor answers there; it exits at
    once, quietly, when the pipe closes first (the executor closed, or the backend is gone)."""
    harden_runner()  # before any secret (the launch) arrives
    warm_up(channel)
    rehearse()
    workspace = _make_ahead(workspace)
    from wml_runner.main import configure_logging
    configure_logging()  # (its stderr is the run's log once launched: ``_run_runner``)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the backend's terminal: the backend closes its pipe
    try:
        env, run_dir, token, answered = channel.recv()
    except (EOFError, OSError):
        _drop(workspace)
        os._exit(0)
    if not answered:
        channel.close()  # its calls go over HTTP
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _run_runner(env, run_dir, token, answered, workspace)


def _make_ahead(workspace: Optional[str]) -> Optional[str]:
    """``workspace``, its folders and the runner's log made (``Workspace.make_ahead``); None if
    they could not be."""
    if workspace is None:
        return None
    try:
        Workspace(Path(workspace)).make_ahead()
        os.close(os.open(os.path.join(workspace, RUNNER_LOG), os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        print(f"wml-runner: the run's folders are made at its launch: {exc}", file=sys.stderr)
        _drop(workspace)
        return None
    return workspace


def _drop(workspace: Optional[str]) -> None:
    """Delete a workspace made ahead that no run will use."""
    if workspace is not None:
        shutil.rmtree(workspace, ignore_errors=True)


def _move_in(workspace: Optional[str], run_dir: str) -> None:
    """Make the workspace made ahead the run's folder (a rename, where making it would be a
    journaled write or two more: in every run's path); a later attempt keeps the folder its run
    has (checkpoints and all): it is dropped. With none, the run's folder is made if new."""
    if workspace is not None:
        try:
            os.rename(workspace, run_dir)
            return
        except OSError:
            _drop(workspace)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)


def _run_runner(env: dict[str, str], run_dir: str, token: str, asked_at_launch: bool,
                workspace: Optional[str] = None) -> None:
    """Body of a forked runner: its own session, environment, directory (``workspace`` made
    ahead, if any) and log file (``asked_at_launch``: the executor makes its first calls for
    it, over its pipe)."""
    os.setsid()
    _move_in(workspace, run_dir)
    os.chdir(run_dir)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(RUNNER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    from wml_runner.main import main
    sys.exit(main(token, asked_at_launch))


class IdleRunner:
    """A runner forked ahead, waiting on its pipe for the one launch it will run; a thread of
    its own (started with it, not with its run: starting one waits until it is scheduled)
    answers its calls over the pipe (``answer``: see ``Executor.on_runner_call``) until it exits.

    The runner's first calls (its spec, its code) are made on its behalf as it is launched
    (``ASKED_AT_LAUNCH``), and answered by the thread that launches it, right behind the launch:
    their answers are waiting when the runner needs them, rather than a round trip (and a wait for
    another thread) later. They are answered as the runner's own would be (its token; the spec not
    before the start is recorded).

    Its run is over when it says its last word (``wml_core.runner_channel``), else when it exits:
    the end is not kept waiting while the kernel frees its memory (~3 ms) and the fork server
    reaps it."""

    def __init__(self, answer: Callable[[], Optional[RunnerCallCallback]] = lambda: None,
                 made_ahead: Optional[Path] = None) -> None:
        """``made_ahead``: the folder it makes the folders of its run in, ahead, if any."""
        self._channel, theirs = _FORKSERVER.Pipe(duplex=True)
        self._answer = answer
        self.workspace = str(made_ahead / secrets.token_hex(8)) if made_ahead else None
        self.process = _FORKSERVER.Process(target=_idle_runner, args=(theirs, self.workspace), daemon=False)
        self.process.start()
        theirs.close()
        self.create_time = psutil.Process(self.process.pid).create_time()
        self._lock = threading.Lock()
        #: The exit code it exits with, once its run is over (or it exited idle).
        self.exit_code: Optional[int] = None
        self._then: Optional[Callable[[Optional[int]], None]] = None
        self._waiter = threading.Thread(target=self._wait, name="wml-runner-exit", daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        exit_code = self._serve()  # as its last word says, if it said one
        with self._lock:  # not while a launch is sent (``launch``)
            self._channel.close()
        if exit_code is None:  # as its exit says
            self.process.join()
            exit_code = self.process.exitcode
        self._ended(exit_code)
        self.process.join()  # after a last word: its process ends, and the fork server reaps it
        _drop(self.workspace)  # made ahead, and left there by a runner killed before its launch

    @property
    def exited(self) -> bool:
        """Whether its run is over (or it exited idle)."""
        return self.exit_code is not None

    def _ended(self, exit_code: Optional[int]) -> None:
        """The runner's run is over: ``then`` its exit code (once launched)."""
        with self._lock:
            self.exit_code, then = exit_code, self._then
        if then is not None:
            then(exit_code)

    def _serve(self) -> Optional[int]:
        """Answer the runner's calls over the pipe, one at a time, until it exits (or the pipe
        closes). The exit code its last word says, if it said one (that counts:
        ``last_word_counts``): its run is over then, though its process may take milliseconds
        more to end (its memory freed) and be reaped."""
        status = None  # of the last answer sent
        try:
            while True:
                ready = wait([self._channel, self.process.sentinel])
                if self._channel in ready:
                    message = self._channel.recv_bytes(MAX_CALL_BYTES)
                    if is_call(message) and (status := self._answer_call(message)) is None:
                        return None
                    said = last_word(message)
                    if said is not None and last_word_counts(status):
                        return said
                elif self.process.sentinel in ready:
                    return None
        except (EOFError, OSError):
            return None

    def _answer_call(self, message: bytes) -> Optional[int]:
        """Send the answer to the call ``message``; its HTTP status, None if none can be given
        (the executor closed)."""
        answer = self._answer()
        if answer is None:
            return None
        answered = answer(message)
        with self._lock:  # not amid a launch's answers (``_hand``)
            self._channel.send_bytes(answered)
        return answer_status(answered)

    def _hang_up(self) -> None:
        """Shut the pipe both ways: the runner reads its end, and the thread answering it wakes
        (closing the pipe would do neither while that thread waits on it)."""
        try:
            with socket.socket(fileno=os.dup(self._channel.fileno())) as end:
                end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already: the runner is gone

    def launch(self, env: dict[str, str], run_dir: str, token: str, then: Callable[[Optional[int]], None]) -> bool:
        """Hand it its run (it runs none other), and ``then`` its exit code once it exits; False
        if it was gone (``then`` is not called)."""
        answer = self._answer()
        asked = [encode_call(ChannelCall(method, f"/v1/runner/{env['WML_RUN_ID']}/{name}", token, b""))
                 for method, name in ASKED_AT_LAUNCH] if answer else []
        with self._lock:  # the thread answering the pipe closes it under this lock, once the runner is gone
            handed = self._hand((env, run_dir, token, answer is not None), asked, answer)
            if handed:
                self._then, exited = then, self.exited
        if not handed:
            log.warning("local: an idle runner (pid %s) was gone; another takes its launch", self.process.pid)
            self._hang_up()
            return False
        if exited:
            then(self.exit_code)
        return True

    def _hand(self, launch: tuple, asked: list[bytes], answer: Optional[RunnerCallCallback]) -> bool:
        """Send ``launch`` over the pipe, then ``answer`` to each call ``asked`` (holding the lock:
        no answer to a call of the runner's comes between them); False if the runner is gone."""
        try:
            self._channel.send(launch)
            for call in asked:
                self._channel.send_bytes(answer(call))
        except OSError:
            return False
        return True

    def end(self, timeout_s: float = 5.0) -> None:
        """Hang up its pipe (it exits at once) and wait for it, killing it if it lingers."""
        self._hang_up()
        self._waiter.join(timeout_s)
        if self._waiter.is_alive():
            self.process.kill()
            self._waiter.join()


class IdleRunners:
    """The idle runners of one executor: ``keep`` of them, forked again in the background as they
    are taken, so that a start finds one ready."""

    def __init__(self, keep: int = IDLE_RUNNERS, answer: Callable[[], Optional[RunnerCallCallback]] = lambda: None,
                 made_ahead: Optional[Path] = None):
        """``made_ahead``: the folder they make the folders of their runs in, ahead, if any."""
        self.keep, self._answer, self._made_ahead = keep, answer, made_ahead
        self._idle: list[IdleRunner] = []
        self._taken_at = 0.0  # (monotonic) when a start last took one
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._wanted.set()
        self._closed = False
        atexit.register(self.close)  # before multiprocessing's own exit waits for its children
        threading.Thread(target=self._fill, name="wml-idle-runners", daemon=True).start()

    def take(self) -> IdleRunner:
        """An idle runner, no longer idle (forked now if none is ready); ``refill`` once it is launched."""
        with self._lock:
            ready = [runner for runner in self._idle if not runner.exited]
            runner = ready.pop(0) if ready else None
            self._idle = ready
            self._taken_at = time.monotonic()
        return runner or IdleRunner(self._answer)  # (no time to make its folders ahead)

    def refill(self) -> None:
        """Fork idle runners again, up to ``keep``, once starts pause (``REFILL_QUIET_S``: after a
        launch, not during it or the next ones of a wave)."""
        self._wanted.set()

    def _fill(self) -> None:
        while self._wanted.wait() and not self._closed:
            self._after_quiet(time.monotonic() + REFILL_LATEST_S)
            self._wanted.clear()
            while len(self._idle) < self.keep and not self._closed:
                try:
                    runner = IdleRunner(self._answer, self._made_ahead)
                except Exception:  # the fork server failed: starts fork their runners themselves
                    log.exception("local: could not fork an idle runner")
                    time.sleep(1.0)
                    continue
                with self._lock:
                    keep = not self._closed
                    if keep:
                        self._idle.append(runner)
                if not keep:
                    runner.end()

    def _after_quiet(self, latest: float) -> None:
        """Return once no runner has been taken for ``REFILL_QUIET_S``, or at ``latest``."""
        while not self._closed and (left := min(self._taken_at + REFILL_QUIET_S, latest) - time.monotonic()) > 0:
            time.sleep(left)

    def close(self) -> None:
        """End the idle runners (runners given a launch go on)."""
        atexit.unregister(self.close)
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        self._wanted.set()
        for runner in idle:
            runner.end()


class LocalExecutor(Executor):
    """Runs each runner as a process group of its own, pinned to GPUs by CUDA_VISIBLE_DEVICES.

    When this host allows it (``isolation_gap`` is None: the backend is root...), each run's
    command runs as a user of its own that its runner leases (``wml_runner.isolation``)."""

    name = "local"

    def __init__(self, work_dir: Path, gpus: Optional[int] = None, slots: Optional[int] = None,
                 warm: Mapping[str, tuple[str, ...]] = FRAMEWORK_MODULES):
        super().__init__()
        self.work_dir = Path(work_dir)
        self.notes = runner_notes(self.work_dir)
        #: Runs of these frameworks start warm: forked from an interpreter that imported these modules.
        self.zygotes = Zygotes(self.work_dir, warm)
        detected = detect_gpus()
        self._real = gpus is None and detected > 0 or (gpus is not None and gpus <= detected)
        count = detected if gpus is None else gpus
        if gpus is None and detected == 0:
            count = os.cpu_count() or 1  # counted slots on a machine without GPUs
        self._capacity = Capacity(gpu_ids=tuple(range(count)),
                                  slots=slots or max(count, os.cpu_count() or 1), real_gpus=self._real)
        self.isolation_gap = isolation_gap(self.work_dir)
        self.enter_helper = self._build_enter_helper() if self.isolation_gap is None else None
        # The fork server, and the first idle runners, start now, not with the first run (its imports take a second).
        made_ahead = self.work_dir / MADE_AHEAD
        shutil.rmtree(made_ahead, ignore_errors=True)  # what runners killed while idle left
        made_ahead.mkdir(mode=0o700, parents=True)
        self.idle = IdleRunners(keep=min(self._capacity.slots, IDLE_RUNNERS), answer=lambda: self.on_runner_call,
                                made_ahead=made_ahead)

    @staticmethod
    def _build_enter_helper() -> Optional[Path]:
        """The program that starts commands in their sandbox (``wml_runner.enter``), if it can be built."""
        helper, why = enter.build()
        if helper is None:
            log.warning("local: commands start with a fork of their runner, which is slower: %s", why)
        return helper

    def capacity(self) -> Capacity:
        return self._capacity

    def start(self, launch: Launch) -> dict[str, Any]:
        run_dir = self.work_dir / launch.run_id  # (made by its runner: ``_move_in``)
        env = {**os.environ, **{k: v for k, v in launch.env.items() if k != TOKEN_ENV}, "WML_WORK_DIR": str(run_dir),
               "CUDA_VISIBLE_DEVICES": ",".join(map(str, launch.gpu_ids))}
        if not self._real:
            env["WML_VIRTUAL_GPUS"] = "1"
        if self.isolation_gap is None:
            env[RUN_USER_ENV] = POOL
        if self.enter_helper:
            env[enter.ENTER_ENV] = str(self.enter_helper)
        zygote = self.zygotes.socket_for(launch.framework, launch.framework_version, env, launch.cpus)
        if zygote:
            env[ZYGOTE_ENV] = zygote
        for _ in range(LAUNCH_TRIES):
            runner = self.idle.take()
            handle = {"pid": runner.process.pid, "create_time": runner.create_time, "attempt": launch.attempt}
            try:
                self._say_handle(launch.run_id, handle, runner)
                launched = runner.launch(env, str(run_dir), launch.env[TOKEN_ENV],
                                         then=functools.partial(self._exited, launch.run_id, launch.attempt,
                                                                runner.process.pid))
            finally:
                self.idle.refill()
            if launched:
                return handle
        raise RuntimeError(f"no runner took the launch in {LAUNCH_TRIES} tries (see the backend's log)")

    def _say_handle(self, run_id: str, handle: dict[str, Any], runner: IdleRunner) -> None:
        """Note the run's runner, then say its handle (the start is recorded then, before the
        runner holds the token and asks for its spec: ``on_handle``); if either fails, the runner,
        never launched, is ended."""
        try:
            write_private(self._note(run_id), json.dumps(handle))
            self.on_handle(run_id, handle)
        except BaseException:
            runner.end()
            raise

    def _exited(self, run_id: str, attempt: int, pid: int, exit_code: Optional[int]) -> None:
        """Our runner ``pid`` of the run's ``attempt`` exited with ``exit_code``."""
        self._forget(run_id, pid)
        self.on_exit(run_id, attempt, exit_code)

    def _note(self, run_id: str) -> Path:
        """Where the runner of ``run_id`` is noted while it runs."""
        return self.notes / f"{run_id}.json"

    def _forget(self, run_id: str, pid: int) -> None:
        """Drop the note of the run's runner ``pid`` once it ended (not a later attempt's)."""
        if _noted(self._note(run_id)).get("pid") == pid:
            self._note(run_id).unlink(missing_ok=True)

    def reconcile(self, live: Callable[[str, int], bool]) -> None:
        """Kill the runners (and all they started) of run attempts that ``live`` says are over: runs
        that ended, or were queued again, while no backend watched them; forget those that are gone."""
        legacy = self.work_dir / RUNNERS  # (where a version before ``runner_notes`` noted them)
        for note in sorted({*self.notes.glob("*.json"), *legacy.glob("*.json")}):
            run_id, handle = note.stem, _noted(note)
            runner = self._process(handle)
            if runner is not None and live(run_id, handle.get("attempt", 1)):
                continue
            if runner is not None:
                log.info("local: killing the runner (pid %s) of run %s (attempt %s), which is over",
                         handle["pid"], run_id, handle.get("attempt", 1))
                self.kill(run_id, handle)
            note.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the idle runners, and the warm interpreters (each ends once the commands it started
        have); the folder of notes goes if no runner is noted there."""
        self.idle.close()
        self.zygotes.close()
        try:
            self.notes.rmdir()
        except OSError:
            pass  # runners still run (noted: a backend started later finds them), or it is gone

    def cancel(self, run_id: str, handle: dict[str, Any]) -> None:
        process = self._process(handle)
        if process is not None:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass

    def kill(self, run_id: str, handle: dict[str, Any]) -> None:
        """Kill the runner and every process it started, at once."""
        process = self._process(handle)
        if process is None:
            return
        try:
            family = process.children(recursive=True) + [process]
        except psutil.Error:
            family = [process]
        for member in family:
            try:
                member.kill()
            except psutil.Error:
                pass

    def reattach(self, run_id: str, handle: dict[str, Any]) -> bool:
        process = self._process(handle)
        if process is None:
            return False
        threading.Thread(target=self._poll_orphan, args=(run_id, handle.get("attempt", 1), process),
                         daemon=True).start()
        return True

    def _poll_orphan(self, run_id: str, attempt: int, process: psutil.Process) -> None:
        try:
            while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                time.sleep(REATTACH_POLL_S)
        except psutil.NoSuchProcess:
            pass
        self._forget(run_id, process.pid)
        self.on_exit(run_id, attempt, None)

    @staticmethod
    def _process(handle: dict[str, Any]) -> Optional[psutil.Process]:
        """The live process a handle names (same pid *and* start time, not a zombie), or None."""
        try:
            process = psutil.Process(handle["pid"])
            same = abs(process.create_time() - handle["create_time"]) < 0.01
            if same and process.status() != psutil.STATUS_ZOMBIE:
                return process
        except (KeyError, psutil.Error):
            pass
        return None


def _noted(note: Path) -> dict[str, Any]:
    """The handle a runner's note holds ({} if there is none, or it is unreadable)."""
    try:
        return json.loads(note.read_text())
    except (OSError, ValueError):
        return {}
