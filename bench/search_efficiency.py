"""Search efficiency: the digits MLP over 27 configurations on 2 slots, grid search to the end
vs ASHA (reduction factor 3), in one run, and Ray Tune's ASHA (``AsyncHyperBandScheduler``, a
peer in its own environment: see peer_env.py) on the same grid, data and training script. Prints
best val_acc and GPU-seconds of each, and GPU-seconds as a ratio of the grid's (goal: our ASHA
within 0.5 point of grid's best with <= 40% of its GPU-seconds).

    python bench/search_efficiency.py [--epochs 27] [--tile 8] [--no-ray] [--quick]

``--quick`` is a smoke run: 9 configurations (``hidden`` fixed at 64), 9 epochs, untiled data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from backend_process import BackendProcess  # noqa: E402
from peer_env import PeerUnavailable, run_peer  # noqa: E402

EXAMPLE = ROOT / "examples" / "digits"
SPACE = {"lr": [0.001, 0.01, 0.1], "hidden": [16, 64, 256], "batch": [16, 64, 256]}
QUICK_SPACE = {**SPACE, "hidden": [64]}


def make_data(folder: Path, tile: int) -> None:
    """Digits with the training set repeated ``tile`` times, so that an epoch takes a while."""
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(folder)], check=True, capture_output=True)
    data = dict(np.load(folder / "digits.npz"))
    data["x_train"], data["y_train"] = np.tile(data["x_train"], (tile, 1)), np.tile(data["y_train"], tile)
    np.savez(folder / "digits.npz", **data)


def manifest(folder: Path, space: dict, epochs: int, early_stopping: bool) -> Path:
    """The example's manifest as a grid over ``space``, with or without ASHA."""
    m = yaml.safe_load((EXAMPLE / "manifest.yml").read_text())
    m["hyperparameters"] = {**space, "epochs": [epochs]}
    m["search"] = {"algorithm": "grid", "metric": "val_acc", "mode": "max"}
    if early_stopping:
        m["search"]["early_stopping"] = {"type": "asha", "min_steps": 1, "reduction_factor": 3, "max_steps": epochs}
    path = folder / f"manifest-{'asha' if early_stopping else 'grid'}.yml"
    path.write_text(yaml.safe_dump(m))
    return path


def run(client, path: Path) -> tuple[float, float, float, dict]:
    """Best val_acc, GPU-seconds, wall seconds and state counts of one experiment."""
    started = time.monotonic()
    experiment = client.train(path, EXAMPLE).wait()
    return experiment.model.best.value, experiment.gpu_seconds, time.monotonic() - started, experiment.model.runs


def ray_asha(data: Path, space: dict, epochs: int) -> dict:
    """Ray Tune's ASHA on the same grid: best val_acc and trial-seconds, or ``{"unavailable": why}``."""
    try:
        return run_peer("ray", Path(__file__).with_name("ray_tune_peer.py"),
                        ["asha", str(epochs), str(data), str(EXAMPLE / "train.py"), json.dumps(space)])
    except PeerUnavailable as exc:
        return {"unavailable": str(exc)}


def ours(tmp: Path, space: dict, epochs: int) -> dict:
    """Grid and ASHA through the backend: name -> (best, GPU-seconds, wall, run counts)."""
    os.environ["WML_HOME"] = str(tmp / "home")  # the client uploads to the backend's file store
    backend = BackendProcess(tmp / "home", gpus=2, slots=2).start()
    try:
        client = backend.client()
        client.upload(tmp / "data", "digits")
        results = {}
        for name, asha in (("grid", False), ("ASHA", True)):
            results[name] = run(client, manifest(tmp, space, epochs, early_stopping=asha))
            print(f"  wml {name}: best {results[name][0]:.4f}, {results[name][1]:.1f} GPU-seconds", flush=True)
        return results
    finally:
        backend.close()


def report(points: int, epochs: int, results: dict, ray: dict) -> None:
    """One table: best val_acc, GPU-seconds and their ratio to the grid's, per search."""
    grid_best, grid_gpu = results["grid"][0], results["grid"][1]
    print(f"\n{points} configurations of the digits MLP, {epochs} epochs, 2 slots")
    print(f"  {'search':24} {'best val_acc':>12} {'vs grid':>9} {'GPU-s':>8} {'ratio':>7} {'wall':>8}  runs")
    for name, (best, gpu, wall, runs) in results.items():
        print(f"  {'wml ' + name:24} {best:12.4f} {100 * (best - grid_best):+8.2f}p {gpu:8.1f} "
              f"{gpu / grid_gpu:7.3f} {wall:7.1f}s  {runs}")
    if "unavailable" in ray:
        print(f"  Ray Tune ASHA: not measured ({ray['unavailable']})")
    else:
        print(f"  {'Ray Tune ' + ray['version'] + ' ASHA':24} {ray['best']:12.4f} "
              f"{100 * (ray['best'] - grid_best):+8.2f}p {ray['trial_seconds']:8.1f} "
              f"{ray['trial_seconds'] / grid_gpu:7.3f} {ray['wall']:7.1f}s  "
              f"{ray['stopped']} of {points} stopped early, {ray['epochs']} epochs in all")
        print("  (Ray: GPU-seconds = the trials' own time_total_s, actors reused, torch imported once "
              "per actor; Ray's start is not counted)")
    asha = results["ASHA"]
    print(f"  goal: wml ASHA within 0.5 point of grid ({100 * (grid_best - asha[0]):+.2f}) "
          f"with <= 0.40 of its GPU-seconds ({asha[1] / grid_gpu:.3f})")


def main() -> None:
    """Run grid and ASHA, then Ray Tune's ASHA, and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--tile", type=int, default=8)
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Tune")
    parser.add_argument("--quick", action="store_true", help="9 epochs on untiled data (a few minutes)")
    args = parser.parse_args()
    space = QUICK_SPACE if args.quick else SPACE
    if args.quick:
        args.epochs, args.tile = 9, 1
    points = math.prod(len(values) for values in space.values())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_data(tmp / "data", args.tile)
        print(f"grid and ASHA over {points} configurations, {args.epochs} epochs", flush=True)
        results = ours(tmp, space, args.epochs)
        ray = {"unavailable": "--no-ray"} if args.no_ray else ray_asha(tmp / "data", space, args.epochs)
    report(points, args.epochs, results, ray)


if __name__ == "__main__":
    main()
