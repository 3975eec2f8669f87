"""A run's learners: N cooperating commands that live and die together."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Optional

from .command import Command

#: How often the learners are checked for an exit.
POLL_S = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, for the learners' rendezvous."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Outcome:
    """How the learners ended: the run's exit code and, if one failed, which."""

    exit_code: int
    failed_learner: Optional[int] = None


class LearnerGroup:
    """Starts every learner; when one fails the others are stopped; ``stop`` stops them all."""

    def __init__(self, commands: dict[int, Command]):
        self.commands = commands

    def stop(self) -> None:
        """Stop every learner (SIGTERM, then SIGKILL)."""
        for command in self.commands.values():
            command.stop()

    def run(self) -> Outcome:
        """Run the learners to the end, all of them or until the first failure."""
        if len(self.commands) == 1:  # no peers to watch: wait for it without polling
            code = next(iter(self.commands.values())).run()
            return Outcome(code)
        for command in self.commands.values():
            command.start()
        running = dict(self.commands)
        failure: Optional[Outcome] = None
        while running:
            for learner, command in list(running.items()):
                code = command.poll()
                if code is None:
                    continue
                del running[learner]
                if code != 0 and failure is None:
                    failure = Outcome(code, learner)
                    self.stop()
            if running:
                time.sleep(POLL_S)
        return failure or Outcome(0)
