"""The runner's life: DOWNLOADING → PROCESSING → STORING → COMPLETED / FAILED / HALTED.

Locally one runner starts all N learners of a run. On Kubernetes each learner is a pod of an
Indexed Job with a runner of its own (``WML_LEARNER_INDEX`` or ``JOB_COMPLETION_INDEX`` set, with
``MASTER_ADDR``/``MASTER_PORT`` of learner 1's pod): it runs only its learner and ships only its
log and metrics. Learner 1 alone reports states and stores results and the code; the others
store their own log, and exit non-zero when their command failed: the executor fails the run.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Optional

from wml_core.models import RunSpec
from wml_core.states import RunState
from wml_runner.command import Command, environment, substitute
from wml_runner.enter import ENTER_ENV
from wml_runner.isolation import (
    POOL,
    RUN_USER_ENV,
    RunUser,
    Sandbox,
    clear_shared_tmp_later,
    hand_over,
    harden_runner,
    kill_user,
    lease_in_use,
    lease_user,
    open_run_file,
    runtime_paths,
    take_back,
    take_token,
)
from wml_runner.learners import LearnerGroup, free_port
from wml_runner.reporter import Reporter
from wml_runner.shipper import Shipper
from wml_runner.spare_threads import in_background
from wml_runner.zygote import ZYGOTE_ENV
from wml_runner.workspace import (
    Workspace,
    fetch_data,
    make_file,
    open_run_store,
    restore_checkpoints,
    scoped_env,
    store_checkpoints,
    store_code,
    store_learner_log,
    store_results,
    unpack_code,
)

log = logging.getLogger("wml_runner")

#: Lines of the log a FAILED run keeps.
TAIL_LINES = 20
#: Characters of each of those lines kept (the end of a longer one, e.g. a progress bar redrawn
#: with carriage returns): the state report stays far below the backend's body limit for it.
TAIL_LINE_CHARS = 2000
#: How long a command that logs with ``run.log`` may take to reach its next step and stop there,
#: when asked to stop, before it is signalled (a command that never logged is signalled at once).
STEP_STOP_GRACE_S = 0.5
#: How long storing results is retried while the object store is unreachable.
STORE_RETRY_S = 300.0


#: The runner's exit code once it has reported its run's end, however the run ended (its last word).
REPORTED = 0

#: What the executor gives every runner (the token: in the environment, a file it names, or in
#: the process, as the local executor does).
REQUIRED_ENV = ("WML_BACKEND_URL", "WML_RUN_ID", "WML_RUNNER_TOKEN")


def main(token: Optional[str] = None, asked_at_launch: bool = False) -> int:
    """Run the run named by the environment with ``token`` (None: taken out of the environment);
    the exit code is ``REPORTED`` whenever the end was reported. ``asked_at_launch``: the local executor made
    the runner's first calls for it (``Reporter``)."""
    harden_runner()  # first: from now on nothing of this process is readable through /proc
    token = token or take_token(os.environ)
    missing = [name for name in REQUIRED_ENV[:2] if not os.environ.get(name)] + ([] if token else [REQUIRED_ENV[2]])
    if missing:
        print(f"wml-runner: {missing[0]} is not set: the executor starts the runner with "
              f"{', '.join(REQUIRED_ENV[:-1])} and {REQUIRED_ENV[-1]}", file=sys.stderr)
        return 2
    configure_logging()
    reporter = Reporter(os.environ["WML_BACKEND_URL"], os.environ["WML_RUN_ID"], token, asked_at_launch=asked_at_launch)
    ws = Workspace(Path(os.environ.get("WML_WORK_DIR") or "/job"))
    runner = Runner(reporter, ws, learner_of_pod(os.environ), isolate=os.environ.get(RUN_USER_ENV) == POOL)
    # The handler runs in the main thread, which may hold a learner's lock (starting its command)
    # when the signal lands: stopping in the handler itself would wait for that lock for ever.
    # It is in place before the backend first hears of this runner (which may then stop it).
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=runner.cancel, daemon=True).start())
    reporter.prefetch_code()
    code = runner.run()
    reporter.close(exit_code=code)  # its last word: the executor need not wait for this process to end
    _step_aside()
    runner.release()
    return code


def configure_logging() -> None:
    """Log as a runner does (to stderr, from INFO on; not each request of the HTTP client): once
    a process, ahead of its run where it can be (an idle runner)."""
    global _logging_configured
    if not _logging_configured:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s runner %(levelname)s: %(message)s", force=True)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        _logging_configured = True


_logging_configured = False


def _step_aside() -> None:
    """Run at the lowest CPU priority from now on: what is left once the end is reported (what
    the run's user left in /tmp cleared, this process's exit) waits for what needs the CPU now
    (the backend ending this run and starting the next, the other runs)."""
    try:
        os.nice(19)
    except OSError:
        pass


def learner_of_pod(env) -> int | None:
    """The learner (index + 1) this runner alone runs, when it is one pod of a distributed run."""
    index = env.get("WML_LEARNER_INDEX") or env.get("JOB_COMPLETION_INDEX")
    if index is None or not index.strip().isdigit() or not env.get("MASTER_ADDR"):
        return None
    return int(index) + 1


class Runner:
    """One attempt of one run, from fetching its code to reporting how it ended.

    ``isolate``: its commands run as a user leased for the run (``isolation``), which gets the
    run's folders while they run and gives them back, all its processes killed, when they end."""

    def __init__(self, reporter: Reporter, ws: Workspace, only_learner: int | None = None, isolate: bool = False):
        self.reporter, self.ws = reporter, ws
        #: The one learner this runner runs (a pod of a distributed run); None: all of them.
        self.only_learner = only_learner
        self.cancelled = False
        self.learners: LearnerGroup | None = None
        self.failed_learner: int | None = None
        self.isolate = isolate
        #: The leased user (held until this process ends: ``_lease`` is its lock file) and whether
        #: it holds the run's folders now.
        self.user: RunUser | None = None
        self._lease: int | None = None
        #: Whether the user may have left files in the shared folders (``release`` clears them).
        self._tmp_left = False
        self._handed = False
        #: Where the command's files are read from following no link: the run's folder when isolated.
        self.root = ws.root if isolate else None

    def cancel(self) -> None:
        """Stop the learners: at their next ``run.log`` step (the stop file), else SIGTERM, then
        SIGKILL; results are still stored."""
        self.cancelled = True
        try:
            self.ws.stop_file.touch(mode=0o644)
        except OSError:
            log.warning("could not create the stop file; the command is signalled")
        if self.learners is not None:
            self.learners.stop(STEP_STOP_GRACE_S if self._logs_steps() else 0.0)

    def _logs_steps(self) -> bool:
        """Whether the command has logged with ``run.log`` (and so looks at the stop file)."""
        try:
            return any(os.lstat(self.ws.metrics_file(k)).st_size > 0 for k in self.learners.commands)
        except OSError:
            return False

    def _leads(self, spec: RunSpec) -> bool:
        """Whether this runner reports the run's states (it runs learner 1, or every learner)."""
        return self._mine(spec) is None or self._mine(spec) == 1

    def _mine(self, spec: RunSpec) -> int | None:
        """The one learner this runner runs, if it is a pod of a distributed run."""
        return self.only_learner if self.only_learner and spec.learners > 1 else None

    def run(self) -> int:
        """Do the whole attempt and report its end, whatever happens; the process's exit code."""
        spec = self.reporter.spec()
        if not self._leads(spec):
            return self._follow(spec)
        try:
            exit_code = self._train(spec)
        except Exception as exc:  # any failure before or after training is the run's failure
            log.exception("run failed")
            self._take_back()
            self._end(RunState.FAILED, None, f"{type(exc).__name__}: {exc}")
            return REPORTED
        if self.cancelled and self._mine(spec):
            pass  # a pod of a distributed run: the executor knows why it was stopped (cancel, a peer failed)
        elif self.cancelled and not self._finished_first(exit_code):
            self._end(RunState.HALTED, exit_code, "cancelled by the user")
        elif exit_code == 0:
            self._end(RunState.COMPLETED, 0, None)
        else:
            who = f"learner {self.failed_learner}: " if self.failed_learner else ""
            self._end(RunState.FAILED, exit_code, who + _exit_reason(exit_code))
        return REPORTED

    def _finished_first(self, exit_code: int) -> bool:
        """Whether the command had ended all its steps, successfully, before the stop took effect."""
        return exit_code == 0 and self.learners is not None and not self.learners.signalled

    def _follow(self, spec: RunSpec) -> int:
        """Learner k > 1 in a pod of its own: train, ship, store its log; exit as its command did."""
        learner = self._mine(spec)
        try:
            self.ws.reset(spec.learners)
            unpack_code(self.reporter.code(), self.ws.model)
            store = open_run_store(spec, self.reporter.credential)
            data_dir = fetch_data(store, spec, self.ws, in_place=not self.isolate)
            sandbox = self._hand_over(spec.learners)
            env = environment(spec, self.ws, data_dir, learner, _master(), share_gpus=False, user=self.user)
            env.update(scoped_env(store))
            self.learners = LearnerGroup({learner: self._command(spec, env, learner, sandbox)})
            if self.cancelled:
                self.learners.stop()
            shipper = Shipper(self.reporter, self.ws.training_log(learner), self.ws.metrics_file(learner),
                              learner=learner, attempt=spec.attempt, root=self.root).start()
            code = self.learners.run().exit_code
            self._take_back()
            shipper.finish()
            _retry(lambda: store_learner_log(store, spec, self.ws, learner), STORE_RETRY_S)
        except Exception:
            log.exception("learner %d failed", learner)
            self._take_back()
            return 1
        if code == 0 or self.cancelled:  # stopped with its run: not a failure of its own
            return 0
        log.error("learner %d: %s; the last lines of its log:\n%s", learner, _exit_reason(code),
                  "\n".join(_tail(self.ws.training_log(learner), self.root)))
        return code if 0 < code < 256 else 128 + (-code if code < 0 else 1)

    def _train(self, spec: RunSpec) -> int:
        self.reporter.state(RunState.DOWNLOADING, hold=True)
        self.ws.reset(spec.learners)
        code = self.reporter.code()
        unpack_code(code, self.ws.model)
        store = open_run_store(spec, self.reporter.credential)
        data_dir = fetch_data(store, spec, self.ws, in_place=not self.isolate)
        restore_checkpoints(store, spec, self.ws)
        sandbox = self._hand_over(spec.learners)
        if self._mine(spec):  # learner 1 of a distributed run: its peers are pods of their own
            envs = {1: environment(spec, self.ws, data_dir, 1, _master(), share_gpus=False, user=self.user)}
        else:
            master = ("127.0.0.1", free_port())
            envs = {k: environment(spec, self.ws, data_dir, k, master, user=self.user)
                    for k in range(1, spec.learners + 1)}
        for env in envs.values():
            env.update(scoped_env(store))
        self.learners = LearnerGroup({k: self._command(spec, env, k, sandbox) for k, env in envs.items()})
        if self.cancelled:
            self.learners.stop()
        shippers: list[Shipper] = []
        storing_code: list[Future] = []

        def started() -> None:
            """Once the commands have started (their start shares the CPU with none of this):
            PROCESSING, the shippers, and the code stored with the results while they run."""
            self.reporter.state(RunState.PROCESSING, wait=False)
            shippers.extend(Shipper(self.reporter, self.ws.training_log(k), self.ws.metrics_file(k), learner=k,
                                    tensorboard_dir=_tensorboard_dir(spec, env) if k == 1 else None,
                                    attempt=spec.attempt, root=self.root).start() for k, env in envs.items())
            storing_code.append(in_background(lambda: _retry(lambda: store_code(store, spec, code), STORE_RETRY_S),
                                              "wml-store-code"))
        outcome = self.learners.run(started=started)
        self._take_back()
        for shipper in shippers:
            shipper.finish()
        self.failed_learner = outcome.failed_learner or (1 if self._mine(spec) and outcome.exit_code else None)
        self.reporter.state(RunState.STORING, hold=True)
        if self.cancelled or outcome.exit_code != 0:  # first, within the grace: the next attempt resumes from them
            _retry(lambda: store_checkpoints(store, spec, self.ws), STORE_RETRY_S)
        _retry(lambda: store_results(store, spec, self.ws), STORE_RETRY_S)
        for storing in storing_code:
            storing.result()
        return outcome.exit_code

    def _command(self, spec: RunSpec, env: dict[str, str], learner: int, sandbox: Sandbox | None) -> Command:
        """Learner ``learner``'s command (in ``sandbox``, when the run is isolated)."""
        return Command(substitute(spec.command, spec.hparams), env, self.ws.model, self.ws.training_log(learner),
                       sandbox, self.root, zygote=os.environ.get(ZYGOTE_ENV))

    def _hand_over(self, learners: int) -> Sandbox | None:
        """Isolated: lease the run's user (once), give it the run's folders; the commands' sandbox."""
        if not self.isolate:
            return None
        if self.user is None:
            self.user, self._lease = lease_user()  # its lock is held until this process ends
        else:
            lease_in_use(self._lease)
        for learner in range(1, learners + 1):  # the command's, though the runner may append to it first
            make_file(self.ws.metrics_file(learner))
        hand_over(self.ws.root, self.ws.folders(learners), self.user)
        self._handed = True
        helper = os.environ.get(ENTER_ENV)
        return Sandbox(self.user, (*runtime_paths(), self.ws.root.resolve()), Path(helper) if helper else None)

    def _take_back(self) -> None:
        """Isolated, once the commands ended: kill what the run's user still runs (whatever it
        forked or detached), take the run's folders back (what it left in /tmp: ``release``)."""
        if self.user is None or not self._handed:
            return
        kill_user(self.user)
        take_back(self.ws.root, self.user)
        self._handed, self._tmp_left = False, True

    def release(self) -> None:
        """Once the run's end is reported: clear what its user left in /tmp (and the like), in a
        process of its own that holds the user until then; this one may exit at once."""
        if self._tmp_left:
            clear_shared_tmp_later(self.user, self._lease)
            self._tmp_left = False

    def _end(self, state: RunState, exit_code: int | None, reason: str | None) -> None:
        tail = _tail(self.ws.training_log(self.failed_learner or 1), self.root) if state is RunState.FAILED else []
        self.reporter.state(state, exit_code=exit_code, reason=reason, log_tail=tail, last_word=REPORTED)


def _master() -> tuple[str, int]:
    """Learner 1's address, as the executor gives it (a pod's stable name on Kubernetes)."""
    return os.environ["MASTER_ADDR"], int(os.environ.get("MASTER_PORT") or 29500)


def _tensorboard_dir(spec: RunSpec, env: dict[str, str]) -> Path | None:
    """The folder of TensorBoard event files the manifest's ``evaluation_metrics`` names, if any."""
    metrics = spec.evaluation_metrics or {}
    if metrics.get("type") != "tensorboard" or not metrics.get("path"):
        return None
    return Path(re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), metrics["path"]))


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"the command was killed by {name}"
    if code == 137:
        return "the command was killed (exit 137: out of memory?)"
    return f"the command exited with code {code}"


def _tail(path: Path, root: Path | None = None, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log the command wrote (``open_run_file``)."""
    try:
        with os.fdopen(open_run_file(path, root), "r", errors="replace") as f:
            return [line.rstrip("\n")[-TAIL_LINE_CHARS:] for line in deque(f, maxlen=lines)]
    except OSError:
        return []


def _retry(action, deadline_s: float) -> None:
    """Run ``action`` until it succeeds, backing off, for at most ``deadline_s``."""
    deadline, delay = time.monotonic() + deadline_s, 0.5
    while True:
        try:
            return action()
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("storing results failed (%s); retrying in %.1f s", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
