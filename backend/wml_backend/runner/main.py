"""The runner's life: DOWNLOADING → PROCESSING → STORING → COMPLETED / FAILED / HALTED."""

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
from .workspace import Workspace, fetch_data, open_run_store, store_results, unpack_code

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
    runner = Runner(reporter, ws)
    signal.signal(signal.SIGTERM, lambda *_: runner.cancel())
    runner.run()
    reporter.close()
    return 0


class Runner:
    """One attempt of one run, from fetching its code to reporting how it ended."""

    def __init__(self, reporter: Reporter, ws: Workspace):
        self.reporter, self.ws = reporter, ws
        self.cancelled = False
        self.learners: LearnerGroup | None = None
        self.failed_learner: int | None = None

    def cancel(self) -> None:
        """Stop the learners (SIGTERM, then SIGKILL); results are still stored."""
        self.cancelled = True
        if self.learners is not None:
            self.learners.stop()

    def run(self) -> None:
        """Do the whole attempt and report its end, whatever happens."""
        spec = self.reporter.spec()
        try:
            exit_code = self._train(spec)
        except Exception as exc:  # any failure before or after training is the run's failure
            log.exception("run failed")
            self._end(RunState.FAILED, None, f"{type(exc).__name__}: {exc}")
            return
        if self.cancelled:
            self._end(RunState.HALTED, exit_code, "cancelled by the user")
        elif exit_code == 0:
            self._end(RunState.COMPLETED, 0, None)
        else:
            who = f"learner {self.failed_learner}: " if self.failed_learner else ""
            self._end(RunState.FAILED, exit_code, who + _exit_reason(exit_code))

    def _train(self, spec: RunSpec) -> int:
        self.reporter.state(RunState.DOWNLOADING)
        self.ws.reset(spec.learners)
        code = self.reporter.code()
        unpack_code(code, self.ws.model)
        store = open_run_store(spec)
        data_dir = fetch_data(store, spec, self.ws)
        master = ("127.0.0.1", free_port())
        command = substitute(spec.command, spec.hparams)
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
        self.failed_learner = outcome.failed_learner
        self.reporter.state(RunState.STORING)
        _retry(lambda: store_results(store, spec, self.ws, code), STORE_RETRY_S)
        return outcome.exit_code

    def _end(self, state: RunState, exit_code: int | None, reason: str | None) -> None:
        tail = _tail(self.ws.training_log(self.failed_learner or 1)) if state is RunState.FAILED else []
        self.reporter.state(state, exit_code=exit_code, reason=reason, log_tail=tail)


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
