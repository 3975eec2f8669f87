"""Benchmark: live metrics from ``run.log()`` in a training process to the notebook's display.

Prints (it is not a test; the figures depend on the machine):

1. latency from ``run.log()`` in a run to the value reaching the client's display model, and to
   the next redraw of the display: p50 / p95 over 1,000 points (goal: p95 <= 500 ms);
2. the cost of one ``run.log()`` call in the training process (goal: <= 5 us), beside
   ``json.dumps`` + a file write and ``mlflow.log_metric`` to a local file store, the peer's
   baseline (goal: ``run.log()`` >= 100x cheaper). mlflow runs in an environment of its own
   (peer_env.py installs it on first use), or in the interpreter named by
   ``WML_BENCH_MLFLOW_PYTHON``;
3. sustained ingest: 20 concurrent runs logging 1,000 points/s each, every point accounted for.

Usage: ``python bench/metrics_latency.py [--points 1000] [--runs 20] [--rate 1000] [--seconds 5]
[--quick]``.
It starts its own backend process in a temporary ``$WML_HOME``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from backend_process import BackendProcess  # noqa: E402
from peer_env import PeerUnavailable, peer_python  # noqa: E402
from wml_core.states import RunState  # noqa: E402

#: A run that waits for the benchmark's go (a file), then logs N points at RATE per second.
PACED = '''
import os, time
from wml_jupyter import run
n, rate = {n}, {rate}
while not os.path.exists("go"):  # in its working folder: a run sees no other of this host's folders
    time.sleep(0.01)
batch, start = max(1, rate // 100), time.time()
for i in range(n):
    if i % batch == 0:
        delay = start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
    run.log(step=i, value=float(i))
'''

MLFLOW = '''
import os, sys, tempfile, time, warnings
warnings.simplefilter("ignore")
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # mlflow 3 keeps its file store behind this switch
import mlflow
n = int(sys.argv[1])
mlflow.set_tracking_uri("file://" + tempfile.mkdtemp())
mlflow.set_experiment("bench")
with mlflow.start_run():
    mlflow.log_metric("acc", 0.0, step=0)
    started = time.perf_counter()
    for i in range(n):
        mlflow.log_metric("acc", 0.9, step=i)
    print((time.perf_counter() - started) / n)
'''


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (0 when empty)."""
    return float(np.percentile(values, q)) if values else 0.0


# -- 2. the cost of one call ---------------------------------------------------------------------

def log_cost(n: int, repeats: int = 5) -> tuple[float, float]:
    """Seconds per ``run.log(step=, loss=, acc=)`` call (best of ``repeats`` rounds of ``n``), and
    CPU seconds per point with the background thread's writing included."""
    path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    os.environ["WML_METRICS_FILE"] = str(path)
    from wml_jupyter import run
    run.log(step=0, loss=0.5, acc=0.9)
    best, cpu = float("inf"), time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(n):
            run.log(step=i, loss=0.5, acc=0.9)
        best = min(best, (time.perf_counter() - started) / n)
    run.flush()
    cpu = (time.process_time() - cpu) / (n * repeats)
    assert sum(1 for _ in path.open()) == n * repeats + 1, "run.log lost points"
    return best, cpu


def json_cost(n: int) -> float:
    """Seconds per ``json.dumps`` + buffered file write of the same point."""
    with open(Path(tempfile.mkdtemp()) / "plain.jsonl", "w") as f:
        started = time.perf_counter()
        for i in range(n):
            f.write(json.dumps({"time": time.time(), "step": i, "values": {"loss": 0.5, "acc": 0.9}}) + "\n")
        return (time.perf_counter() - started) / n


def mlflow_cost(n: int) -> tuple[float | None, str]:
    """Seconds per ``mlflow.log_metric`` to a local file store, and which mlflow ran it
    (or None and why not)."""
    try:
        python, version = os.environ.get("WML_BENCH_MLFLOW_PYTHON"), "as installed there"
        if not python:
            python, version = peer_python("mlflow")
    except PeerUnavailable as exc:
        return None, str(exc)
    out = subprocess.run([str(python), "-c", MLFLOW, str(n)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["mlflow not importable"])[-1]
    return float(out.stdout.strip().splitlines()[-1]), f"mlflow {version}, {python}"


# -- 1 and 3: through a real backend ---------------------------------------------------------------

def submit(client, runs: int, n: int, rate: int):
    """An experiment of ``runs`` paced runs, its live display attached (REDRAW timings recorded)."""
    exp = client.train_code(PACED.format(n=n, rate=rate), name="bench", runs=runs)
    display = exp.live()
    display.redraw_log = []
    original = display.redraw

    def timed(figure: bool = True) -> None:
        started = time.time()
        original(figure)
        display.redraw_log.append((started, time.time(), figure))
    display.redraw = timed
    arrivals: list[tuple[float, float]] = []  # (logged, arrived) per point that came while live
    display.model.listeners.append(lambda rid, pts: arrivals.extend((p["time"], time.time()) for p in pts))
    return exp, display, arrivals


def release(client, home: Path, exp_id: str) -> None:
    """Let the experiment's waiting runs log: a ``go`` file in each one's working folder."""
    for run in client.runs(exp_id):
        for folder in home.rglob(f"{run.id}/model"):
            (folder / "go").touch()


def wait_running(client, exp_id: str, runs: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(r.state is RunState.PROCESSING for r in client.runs(exp_id)) == runs:
            return
        time.sleep(0.1)
    raise SystemExit(f"the {runs} runs did not all start in {timeout} s (slots?)")


def to_screen(arrivals: list[tuple[float, float]], redraws: list[tuple[float, float, bool]],
              figure: bool) -> list[float]:
    """Per point: from its log call to the end of the first redraw (of the figure, if ``figure``;
    of the table, which shows the latest values, if not) that began after the point arrived."""
    starts = np.array([s for s, _, fig in redraws if fig or not figure])
    ends = np.array([e for _, e, fig in redraws if fig or not figure])
    out = []
    for logged, arrived in arrivals:
        i = np.searchsorted(starts, arrived)
        if i < len(starts):
            out.append(ends[i] - logged)
    return out


def latency(client, home: Path, points: int) -> None:
    exp, display, arrivals = submit(client, runs=1, n=points, rate=250)
    wait_running(client, exp.id, 1)
    display.feed.synced.wait(30)
    release(client, home, exp.id)
    display.wait(300)
    model_ms = [1000 * (a - t) for t, a in arrivals]
    print(f"1. log -> display model, {len(model_ms)} points: p50 {pct(model_ms, 50):.0f} ms, "
          f"p95 {pct(model_ms, 95):.0f} ms, max {max(model_ms):.0f} ms (goal p95 <= 500 ms)")
    for what, figure in (("table", False), ("figure", True)):
        ms = [1000 * s for s in to_screen(arrivals, display.redraw_log, figure)]
        print(f"   log -> {what} redrawn: p50 {pct(ms, 50):.0f} ms, p95 {pct(ms, 95):.0f} ms")
    print(f"   {len(display.redraw_log)} redraws in {display.redraw_log[-1][1] - display.redraw_log[0][0]:.1f} s, "
          f"{sum(f for *_, f in display.redraw_log)} of them with the figure")
    display.close()


def ingest(client, home: Path, runs: int, rate: int, seconds: float) -> None:
    n = int(rate * seconds)
    exp, display, arrivals = submit(client, runs=runs, n=n, rate=rate)
    wait_running(client, exp.id, runs)
    display.feed.synced.wait(30)
    started = time.time()
    release(client, home, exp.id)
    display.wait(600)
    model = display.model
    got = {rid: model.count(rid, "value") for rid in model.runs}
    lost = sum(n - c for c in got.values())
    last_arrival = max(a for _, a in arrivals)
    lag_ms = [1000 * (a - t) for t, a in arrivals]
    print(f"3. ingest: {runs} runs x {rate} points/s for {seconds:.0f} s = {runs * n} points; "
          f"received {sum(got.values())}, lost {lost}; all in {last_arrival - started:.1f} s "
          f"({sum(got.values()) / (last_arrival - started):.0f} points/s); latency under load "
          f"p50 {pct(lag_ms, 50):.0f} ms, p95 {pct(lag_ms, 95):.0f} ms; {len(display.redraw_log)} redraws")
    display.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=1000, help="points for the latency measurement")
    p.add_argument("--runs", type=int, default=20, help="concurrent runs for the ingest measurement")
    p.add_argument("--rate", type=int, default=1000, help="points per second per run")
    p.add_argument("--seconds", type=float, default=5.0, help="how long each run logs")
    p.add_argument("--calls", type=int, default=50_000, help="run.log calls per timed round")
    p.add_argument("--quick", action="store_true", help="fewer points, runs and calls (about a minute)")
    args = p.parse_args()
    if args.quick:
        args.points, args.runs, args.seconds, args.calls = 300, 5, 2.0, 10_000

    print("timing run.log(), json.dumps and mlflow.log_metric ...", flush=True)
    (cost, cpu), plain = log_cost(args.calls), json_cost(args.calls)
    flow, where = mlflow_cost(500 if args.quick else 2000)
    print(f"2. one run.log() call: {cost * 1e6:.2f} us (goal <= 5 us; best of 5 x {args.calls}); "
          f"{cpu * 1e6:.2f} us of CPU per point with its background write")
    print(f"   json.dumps + file write: {plain * 1e6:.2f} us ({plain / cost:.1f}x run.log)")
    if flow is not None:
        print(f"   mlflow.log_metric to a local file store: {flow * 1e6:.0f} us: run.log() is {flow / cost:.0f}x "
              f"cheaper (goal >= 100x: {'met' if flow / cost >= 100 else 'NOT met'}; {where})")
    else:
        print(f"   mlflow.log_metric: not measured ({where})")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backend = BackendProcess(work / "wml-home", gpus=2, slots=args.runs + 2).start()
        os.environ.update(WML_HOME=str(backend.home))
        try:
            client = backend.client()
            latency(client, backend.home, args.points)
            ingest(client, backend.home, args.runs, args.rate, args.seconds)
        finally:
            backend.close()


if __name__ == "__main__":
    main()
