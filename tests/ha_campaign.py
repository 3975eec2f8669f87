"""A fault campaign against a ``Cluster``: a sweep, the leader killed (and a follower), and the
checks that every run ended once, ran once and was billed once and that every event stream got
every state change in order. ``tests/test_ha.py`` runs it short, ``bench/ha.py`` long.

A runner outlives the replica that started it (it is a process of its own); the leader that
takes over re-attaches it by pid.
"""

from __future__ import annotations

import json
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import httpx
import psutil
import yaml

from ha_cluster import Cluster

TERMINAL = {"COMPLETED", "FAILED", "HALTED", "STOPPED"}
#: Training code that logs ``steps`` points, ``sleep`` seconds apart.
TRAIN = """
import time
from wml_jupyter import run
hp = run.hparams()
for step in range(1, int(hp["steps"]) + 1):
    run.log(step=step, acc=hp["lr"] * step)
    time.sleep(float(hp["sleep"]))
"""


class SseRecorder(threading.Thread):
    """A client of ``/v1/events`` that records every event with its id and arrival time; when its
    replica goes away it reconnects to another live one with ``Last-Event-ID``."""

    def __init__(self, urls: Callable[[], list[str]], url: str, token: str):
        super().__init__(daemon=True)
        self.urls, self.url, self.token = urls, url, token
        self.events: list[tuple[int, dict, float]] = []
        self.replicas_used = [url]
        self.connected = threading.Event()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._read()
            except (httpx.HTTPError, OSError):
                pass
            if self._halt.wait(0.1):
                return
            others = [u for u in self.urls() if u != self.url] or [self.url]
            self.url = others[0]
            self.replicas_used.append(self.url)

    def _read(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        if self.events:
            headers["Last-Event-ID"] = str(self.events[-1][0])
        timeout = httpx.Timeout(2.0, read=60.0)  # the backend sends a heartbeat every 15 s
        with httpx.stream("GET", f"{self.url}/v1/events", headers=headers, timeout=timeout) as response:
            response.raise_for_status()
            self.connected.set()
            seq, data = None, None
            for line in response.iter_lines():
                if self._halt.is_set():
                    return
                if line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif not line and seq is not None and data is not None:
                    self.events.append((seq, data, time.time()))
                    seq, data = None, None


@dataclass
class Campaign:
    """What one fault campaign did and saw."""

    experiment: str
    takeovers: list[float] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    recorders: list[SseRecorder] = field(default_factory=list)
    commands: Optional[CommandWatcher] = None


def write_sweep(folder: Path, runs: int, steps: int, sleep: float) -> tuple[Path, Path]:
    """A definition of ``runs`` runs of ``TRAIN``; (manifest, model dir)."""
    model = folder / "model"
    model.mkdir(parents=True)
    (model / "train.py").write_text(TRAIN)
    manifest = {"name": "ha", "gpus": 1, "framework": {"name": "custom", "command": "python3 train.py"},
                "hyperparameters": {"lr": {"uniform": [0.0, 1.0]}, "steps": [steps], "sleep": [sleep]},
                "search": {"algorithm": "random", "runs": runs, "seed": 3, "metric": "acc", "mode": "max"}}
    (folder / "manifest.yml").write_text(yaml.safe_dump(manifest))
    return folder / "manifest.yml", model


class CommandWatcher(threading.Thread):
    """Records, every ``POLL_S``, which processes of this host run a training command (``train.py``)
    and for which run (their ``TRAINING_ID``): the processes each run's command ever had."""

    POLL_S = 0.1

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.commands: dict[str, set[tuple[int, float]]] = {}
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def run(self) -> None:
        while not self._halt.wait(self.POLL_S):
            for process in psutil.process_iter(["cmdline", "create_time"]):
                cmdline = process.info["cmdline"] or []
                if len(cmdline) > 1 and Path(cmdline[0]).name.startswith("python") and cmdline[1] == "train.py":
                    self._record(process)

    def _record(self, process: psutil.Process) -> None:
        try:
            run_id = process.environ().get("TRAINING_ID")
        except psutil.Error:
            return
        if run_id:
            self.commands.setdefault(run_id, set()).add((process.pid, process.info["create_time"]))


def campaign(cluster: Cluster, manifest: Path, model: Path, leader_kills: int, gap_s: float,
             seed: int = 1) -> Campaign:
    """Submit the sweep through the balancer with an event recorder on every replica, then kill
    the leader ``leader_kills`` times and one follower (one killed before, so that one replica is
    never killed), ``gap_s`` apart, each restarted once another leads; wait for the sweep's end."""
    rng = random.Random(seed)
    recorders = [SseRecorder(cluster.live_urls, r.url, cluster.token) for r in cluster.replicas]
    for recorder in recorders:
        recorder.start()
        assert recorder.connected.wait(10), "an event stream did not connect"
    commands = CommandWatcher()
    commands.start()
    result = cluster.cli_json("train", str(manifest), str(model))
    found = Campaign(experiment=result["id"], recorders=recorders, commands=commands)
    plan = ["leader"] * leader_kills
    plan.insert(min(2, len(plan)), "follower")
    for what in plan:
        time.sleep(gap_s * rng.uniform(0.7, 1.3))
        found.kills.append(what)
        if what == "leader":
            found.takeovers.append(_kill_leader(cluster))
        else:
            _kill_follower(cluster)
    _wait_ended(cluster, found.experiment)
    time.sleep(1.0)  # the last events reach every stream
    for recorder in recorders:
        recorder.stop()
    commands.stop()
    return found


def _kill_leader(cluster: Cluster) -> float:
    """Kill the leader; restart it once another leads; the seconds until another led."""
    leader = cluster.wait_leader()
    cluster.kill(leader)
    killed = time.monotonic()
    cluster.wait_leader(other_than=leader)
    takeover = time.monotonic() - killed
    cluster.restart(leader)
    return takeover


def freeze_leader(cluster: Cluster) -> float:
    """Stop the leader (SIGSTOP: alive to the database, doing nothing) until another leads, then
    let it go on; the seconds until another led (its lease had to expire). It steps down."""
    leader = cluster.wait_leader()
    frozen = cluster.replicas[leader].proc
    frozen.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        cluster.wait_leader(timeout=30, other_than=leader)
        return time.monotonic() - stopped
    finally:
        frozen.send_signal(signal.SIGCONT)


def _kill_follower(cluster: Cluster) -> None:
    """Kill and restart a replica that does not lead, one killed before when there is one."""
    leader = cluster.wait_leader()
    followers = [n for n in range(len(cluster.replicas)) if n != leader]
    victim = next((n for n in followers if n in cluster.killed), followers[0])
    cluster.kill(victim)
    time.sleep(0.3)
    cluster.restart(victim)


def _wait_ended(cluster: Cluster, experiment: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.cli_json("show", experiment)["state"] not in ("QUEUED", "RUNNING"):
            return
        time.sleep(0.5)
    raise AssertionError(f"experiment {experiment} did not end within {timeout} s")


def check(cluster: Cluster, found: Campaign) -> dict:
    """Every run ended once, ran once (one PROCESSING, one process of its command), is billed
    once; every event stream got every state change of every run in order. Returns the runs
    and the event latencies seen."""
    runs = cluster.cli_json("list", "--experiment", found.experiment)
    for run in runs:
        states = [t["state"] for t in run["transitions"]]
        assert run["state"] == "COMPLETED", f"{run['id']}: {states} ({run['reason']})"
        assert sum(s in TERMINAL for s in states) == 1 and states.count("PROCESSING") == 1, f"{run['id']}: {states}"
        processes = found.commands.commands.get(run["id"], set())
        assert len(processes) == 1, f"{run['id']}'s command ran as {len(processes)} processes: {processes}"
        assert abs(run["gpu_seconds"] - _billable(run)) < 0.01, f"{run['id']} billed {run['gpu_seconds']}"
    usage = {e["id"]: e["gpu_seconds"] for e in cluster.cli_json("usage")["experiments"]}
    assert abs(usage[found.experiment] - sum(r["gpu_seconds"] for r in runs)) < 0.1, "usage counts a run twice"
    latencies = []
    for recorder in found.recorders:
        latencies += _check_stream(recorder, runs)
    return {"latencies": latencies, "runs": runs}


def _billable(run: dict) -> float:
    """GPU-seconds of the spans from PENDING to the end that got past PENDING."""
    total, start, previous = 0.0, None, None
    for t in run["transitions"]:
        stamp = datetime.fromisoformat(t["time"]).timestamp()
        if t["state"] == "PENDING":
            start = stamp
        elif start is not None and t["state"] in TERMINAL | {"QUEUED"}:
            total += 0.0 if (t["state"] == "QUEUED" and previous == "PENDING") else stamp - start
            start = None
        previous = t["state"]
    return total * run["gpus"]


def _check_stream(recorder: SseRecorder, runs: list[dict]) -> list[float]:
    """Each run's states in the stream are its transitions, in order; no event twice. The
    seconds from each transition to its arrival."""
    seqs = [seq for seq, _, _ in recorder.events]
    assert seqs == sorted(set(seqs)), f"a stream through {recorder.replicas_used} repeated or reordered events"
    seen: dict[str, list[str]] = {}
    latencies = []
    for _, event, arrived in recorder.events:
        if event["type"] == "run":
            run = event["run"]
            seen.setdefault(run["id"], []).append(run["state"])
            latencies.append(arrived - datetime.fromisoformat(run["transitions"][-1]["time"]).timestamp())
    for run in runs:
        expected = [t["state"] for t in run["transitions"]]
        assert seen.get(run["id"]) == expected, \
            f"a stream through {recorder.replicas_used} saw {run['id']} as {seen.get(run['id'])}, not {expected}"
    return latencies


def summary(seconds: list[float]) -> str:
    """p50 and max of a list of durations."""
    return f"p50 {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s" if seconds else "none"
