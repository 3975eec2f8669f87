"""Ray Tune doing what our benchmarks ask of the backend; run by ``peer_env`` in Ray's own venv.

    python ray_tune_peer.py sweep RUNS SLOTS SECONDS...
        RUNS trials of ``sleep SECONDS`` on SLOTS one-CPU slots, per duration (sweep_overhead.py)
    python ray_tune_peer.py asha EPOCHS DATA_DIR TRAIN_PY SPACE_JSON
        the same grid with AsyncHyperBandScheduler on 2 slots (search_efficiency.py)

Prints progress lines (``bench: ...``), then one JSON object on its last line. Actors are reused between
trials (``reuse_actors=True``, Ray's fastest setting): the comparison is against Ray at its best.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types

import ray
from ray import tune

#: Where Tune keeps its experiments and trials write their results; removed at the end.
SCRATCH = tempfile.mkdtemp(prefix="ray-bench-")


def say(line: str) -> None:
    """A progress line for the benchmark that runs this script (Ray's own output is not shown)."""
    print(f"bench: {line}", flush=True)


def start_ray(slots: int, attempts: int = 3) -> float:
    """Start a local Ray with ``slots`` CPUs; seconds it took (not counted in any makespan).

    Ray gives its raylet 30 s to register, which a busy machine can miss: it is tried again."""
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=slots, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=False)
            return time.monotonic() - started
        except Exception as exc:  # Ray raises a bare Exception for this
            ray.shutdown()
            if attempt == attempts:
                raise
            say(f"ray did not start ({str(exc)[:60]}...); trying again")


def run_config(name: str) -> tune.RunConfig:
    return tune.RunConfig(name=name, storage_path=SCRATCH, verbose=0)


# -- sweep ------------------------------------------------------------------------------------

def sweep(runs: int, slots: int, durations: list[float]) -> dict:
    """Per duration: ``Tuner.fit``'s wall seconds for ``runs`` trials of ``sleep D`` on ``slots``
    slots, and the span from the first trial's start to the last one's end (no actor start-up)."""
    startup = start_ray(slots)
    warm = sweep_once(slots, slots, "true")  # Ray's worker processes up before anything is timed
    say(f"ray started in {startup:.1f} s, warmed up in {warm['makespan']:.1f} s")
    out = {"ray_start": startup, "warm_up": warm["makespan"]}
    for seconds in durations:
        out[str(seconds)] = sweep_once(runs, slots, f"sleep {seconds}")
        say(f"{runs} trials of sleep {seconds}: fit {out[str(seconds)]['makespan']:.2f} s")
    return out


def sweep_once(runs: int, slots: int, command: str) -> dict:
    """One ``Tuner.fit`` of ``runs`` trials of ``bash -c command``."""
    def trial(config: dict) -> None:
        started = time.time()
        subprocess.run(["bash", "-c", command], check=True)
        tune.report({"started": started, "ended": time.time()})  # without a report Tune waits 30 s

    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 1}),
                       param_space={"i": tune.grid_search(list(range(runs)))},
                       tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=slots),
                       run_config=run_config("sweep"))
    started = time.monotonic()
    results = tuner.fit()
    wall = time.monotonic() - started
    done = [r.metrics for r in results if r.metrics and "ended" in r.metrics]
    span = max(m["ended"] for m in done) - min(m["started"] for m in done)
    return {"makespan": wall, "trials_span": span, "errors": runs - len(done)}


# -- asha -------------------------------------------------------------------------------------

def training(train_py: str, data_dir: str):
    """A trainable that runs ``train.py`` in-process, its ``run.log`` reporting to Tune."""
    def trainable(config: dict) -> None:
        shim = types.ModuleType("wml_jupyter.run")
        shim.hparams = lambda: dict(config)
        shim.log = lambda step=None, **values: tune.report({**values, "step": step})
        package = types.ModuleType("wml_jupyter")
        package.run = shim
        sys.modules.update({"wml_jupyter": package, "wml_jupyter.run": shim})
        os.environ.update(DATA_DIR=data_dir, RESULT_DIR=tempfile.mkdtemp(dir=SCRATCH),
                          WML_TORCH_THREADS="1")
        import runpy
        runpy.run_path(train_py, run_name="__main__")
    return trainable


def asha(epochs: int, data_dir: str, train_py: str, space: dict) -> dict:
    """Best val_acc and trial-seconds of the grid under ASHA (grace 1, reduction factor 3)."""
    startup = start_ray(2)
    scheduler = tune.schedulers.AsyncHyperBandScheduler(
        time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=3)
    grid = {name: tune.grid_search(values) for name, values in space.items()}
    tuner = tune.Tuner(tune.with_resources(training(train_py, data_dir), {"cpu": 1}),
                       param_space={**grid, "epochs": epochs},
                       tune_config=tune.TuneConfig(metric="val_acc", mode="max", scheduler=scheduler,
                                                   reuse_actors=True, max_concurrent_trials=2),
                       run_config=run_config("asha"))
    say(f"ray started in {startup:.1f} s; {math.prod(map(len, space.values()))} trials under ASHA")
    started = time.monotonic()
    results = tuner.fit()
    wall = time.monotonic() - started
    finals = [r.metrics for r in results if r.metrics]
    return {"best": max(m["val_acc"] for m in finals),
            "trial_seconds": sum(m["time_total_s"] for m in finals),
            "epochs": sum(m["training_iteration"] for m in finals),
            "stopped": sum(m["training_iteration"] < epochs for m in finals),
            "wall": wall, "ray_start": startup, "errors": sum(1 for r in results if r.error)}


def main() -> None:
    what, args = sys.argv[1], sys.argv[2:]
    try:
        if what == "sweep":
            out = sweep(int(args[0]), int(args[1]), [float(a) for a in args[2:]])
        else:
            out = asha(int(args[0]), args[1], args[2], json.loads(args[3]))
    finally:
        ray.shutdown()
        shutil.rmtree(SCRATCH, ignore_errors=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
