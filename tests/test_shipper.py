"""The shipper: what a command wrote reaches the backend once, in order, however the shipper's
background rounds and its last round (at the command's end) fall."""

from __future__ import annotations

import threading
import time

from wml_runner.shipper import SHIP_INTERVAL_S, Shipper


class SlowBackend:
    """The shipper's reporter, as the backend answers it (a log is appended at its offset, a
    resent part is not appended again), with its first call held until ``release`` is set."""

    def __init__(self) -> None:
        self.text = ""
        self.in_call, self.release = threading.Event(), threading.Event()

    def log(self, learner: int, offset: int, text: str) -> int:
        self.in_call.set()
        assert self.release.wait(10), "the test never released the call"
        if offset == len(self.text):
            self.text += text
        return len(self.text)

    def metrics(self, points) -> None:
        pass


def test_the_last_round_waits_for_the_round_under_way_and_nothing_is_shipped_twice_or_after(tmp_path):
    log, metrics = tmp_path / "training-log.txt", tmp_path / "metrics.jsonl"
    log.write_text("first\n")
    backend = SlowBackend()
    shipper = Shipper(backend, log, metrics).start()
    assert backend.in_call.wait(10), "the shipper's thread did not ship"
    with log.open("a") as f:
        f.write("second\n")
    finishing = threading.Thread(target=shipper.finish)
    finishing.start()
    time.sleep(0.2)
    assert finishing.is_alive(), "the last round did not wait for the round under way"
    backend.release.set()
    finishing.join(10)
    assert backend.text == "first\nsecond\n"
    with log.open("a") as f:
        f.write("after the end\n")
    time.sleep(3 * SHIP_INTERVAL_S)
    assert backend.text == "first\nsecond\n", "the shipper's thread shipped after its last round"
