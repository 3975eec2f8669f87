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
import time
from collections import deque
from pathlib import Path

from ..models import RunSpec
from ..states import RunState
from .command import Command, environment, substitute
from .learners import LearnerGroup, free_port
from .reporter import Reporter
from .shipper import Shipper
from .workspace import (
    Workspace,
    fetch_data,
    open_run_store,
    store_learner_log,
    store_results,
    unpack_code,
)

log = logging.getLogger("wml_runner")

#: Lines of the log a FAILED run keeps.
TAIL_LINES = 20
#: How long storing results is retried while the object store is unreachable.
STORE_RETRY_S = 300.0


def main() -> int:
    """Run the run named by the environment; the exit code is 0 whenever the end was reported."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s runner %(levelname)s: %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    reporter = Reporter(os.environ["WML_BACKEND_URL"], os.environ["WML_RUN_ID"], os.environ["WML_RUNNER_TOKEN"])
    ws = Workspace(Path(os.environ.get("WML_WORK_DIR") or "/job"))
    runner = Runner(reporter, ws, learner_of_pod(os.environ))
    signal.signal(signal.SIGTERM, lambda *_: runner.cancel())
    code = runner.run()
    reporter.close()
    return code


def learner_of_pod(env) -> int | None:
    """The learner (index + 1) this runner alone runs, when it is one pod of a distributed run."""
    index = env.get("WML_LEARNER_INDEX") or env.get("JOB_COMPLETION_INDEX")
    if index is None or not index.strip().isdigit() or not env.get("MASTER_ADDR"):
        return None
    return int(index) + 1


class Runner:
    """One attempt of one run, from fetching its code to reporting how it ended."""

    def __init__(self, reporter: Reporter, ws: Workspace, only_learner: int | None = None):
        self.reporter, self.ws = reporter, ws
        #: The one learner this runner runs (a pod of a distributed run); None: all of them.
        self.only_learner = only_learner
        self.cancelled = False
        self.learners: LearnerGroup | None = None
        self.failed_learner: int | None = None

    def cancel(self) -> None:
        """Stop the learners (SIGTERM, then SIGKILL); results are still stored."""
        self.cancelled = True
        if self.learners is not None:
            self.learners.stop()

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
            self._end(RunState.FAILED, None, f"{type(exc).__name__}: {exc}")
            return 0
        if self.cancelled and self._mine(spec):
            pass  # a pod of a distributed run: the executor knows why it was stopped (cancel, a peer failed)
        elif self.cancelled:
            self._end(RunState.HALTED, exit_code, "cancelled by the user")
        elif exit_code == 0:
            self._end(RunState.COMPLETED, 0, None)
        else:
            who = f"learner {self.failed_learner}: " if self.failed_learner else ""
            self._end(RunState.FAILED, exit_code, who + _exit_reason(exit_code))
        return 0

    def _follow(self, spec: RunSpec) -> int:
        """Learner k > 1 in a pod of its own: train, ship, store its log; exit as its command did."""
        learner = self._mine(spec)
        try:
            self.ws.reset(spec.learners)
            unpack_code(self.reporter.code(), self.ws.model)
            store = open_run_store(spec)
            data_dir = fetch_data(store, spec, self.ws)
            env = environment(spec, self.ws, data_dir, learner, _master(), share_gpus=False)
            command = Command(substitute(spec.command, spec.hparams), env, self.ws.model, self.ws.training_log(learner))
            self.learners = LearnerGroup({learner: command})
            if self.cancelled:
                self.learners.stop()
            shipper = Shipper(self.reporter, self.ws.training_log(learner), self.ws.metrics_file(learner),
                              learner=learner, attempt=spec.attempt).start()
            code = self.learners.run().exit_code
            shipper.finish()
            _retry(lambda: store_learner_log(store, spec, self.ws, learner), STORE_RETRY_S)
        except Exception:
            log.exception("learner %d failed", learner)
            return 1
        if code == 0 or self.cancelled:  # stopped with its run: not a failure of its own
            return 0
        log.error("learner %d: %s; the last lines of its log:\n%s", learner, _exit_reason(code),
                  "\n".join(_tail(self.ws.training_log(learner))))
        return code if 0 < code < 256 else 128 + (-code if code < 0 else 1)

    def _train(self, spec: RunSpec) -> int:
        self.reporter.state(RunState.DOWNLOADING)
        self.ws.reset(spec.learners)
        code = self.reporter.code()
        unpack_code(code, self.ws.model)
        store = open_run_store(spec)
        data_dir = fetch_data(store, spec, self.ws)
        command = substitute(spec.command, spec.hparams)
        if self._mine(spec):  # learner 1 of a distributed run: its peers are pods of their own
            envs = {1: environment(spec, self.ws, data_dir, 1, _master(), share_gpus=False)}
        else:
            master = ("127.0.0.1", free_port())
            envs = {k: environment(spec, self.ws, data_dir, k, master) for k in range(1, spec.learners + 1)}
        self.learners = LearnerGroup({k: Command(command, env, self.ws.model, self.ws.training_log(k))
                                      for k, env in envs.items()})
        if self.cancelled:
            self.learners.stop()
        self.reporter.state(RunState.PROCESSING)
        shippers = [Shipper(self.reporter, self.ws.training_log(k), self.ws.metrics_file(k), learner=k,
                            tensorboard_dir=_tensorboard_dir(spec, env) if k == 1 else None,
                            attempt=spec.attempt).start() for k, env in envs.items()]
        outcome = self.learners.run()
        for shipper in shippers:
            shipper.finish()
        self.failed_learner = outcome.failed_learner or (1 if self._mine(spec) and outcome.exit_code else None)
        self.reporter.state(RunState.STORING)
        _retry(lambda: store_results(store, spec, self.ws, code), STORE_RETRY_S)
        return outcome.exit_code

    def _end(self, state: RunState, exit_code: int | None, reason: str | None) -> None:
        tail = _tail(self.ws.training_log(self.failed_learner or 1)) if state is RunState.FAILED else []
        self.reporter.state(state, exit_code=exit_code, reason=reason, log_tail=tail)


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


def _tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "r", errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
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
