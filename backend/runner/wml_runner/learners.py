"""A run's learners: N cooperating commands that live and die together."""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from wml_runner.command import Command

#: How often the learners are checked for an exit.
POLL_S = 0.05


#: Where Linux keeps the range it draws the local ports of outgoing connections from.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to now, for the learners' rendezvous."""
    # Rank 0 binds it seconds later (after importing torch). A port below the ephemeral range
    # cannot be taken meanwhile as the local port of some outgoing connection.
    low = _ephemeral_low()
    below = range(max(1024, low - 8192), low)
    for port in random.sample(below, k=min(64, len(below))):
        if _bindable(host, port):
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class Outcome:
    """How the learners ended: the run's exit code and, if one failed, which."""

    exit_code: int
    failed_learner: Optional[int] = None


class LearnerGroup:
    """Starts every learner; when one fails the others are stopped; ``stop`` stops them all."""

    def __init__(self, commands: dict[int, Command]):
        self.commands = commands

    def stop(self, grace_s: float = 0.0) -> None:
        """Stop every learner: by itself within ``grace_s`` (asked through the stop file), else
        SIGTERM, then SIGKILL."""
        deadline = time.monotonic() + grace_s
        for command in self.commands.values():
            command.stop(max(0.0, deadline - time.monotonic()))

    @property
    def signalled(self) -> bool:
        """Whether any learner had to be signalled to stop (had not ended by itself)."""
        return any(command.signalled for command in self.commands.values())

    def run(self, started: Callable[[], Any] = lambda: None) -> Outcome:
        """Run the learners to the end, all of them or until the first failure; ``started()``
        once they have all started."""
        for command in self.commands.values():
            command.start()
        started()
        if len(self.commands) == 1:  # no peers to watch: wait for it without polling
            return Outcome(next(iter(self.commands.values())).wait())
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
