"""Search efficiency: the digits MLP over 27 configurations on 2 slots, grid search to the end
vs ASHA (reduction factor 3), in one run. Prints best val_acc of each and the ratio of
GPU-seconds (goal: ASHA within 0.5 point of grid's best with <= 40% of its GPU-seconds).

    python bench/search_efficiency.py [--epochs 27] [--tile 8]
"""

from __future__ import annotations

import argparse
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

EXAMPLE = ROOT / "examples" / "digits"
SPACE = {"lr": [0.001, 0.01, 0.1], "hidden": [16, 64, 256], "batch": [16, 64, 256]}


def make_data(folder: Path, tile: int) -> None:
    """Digits with the training set repeated ``tile`` times, so that an epoch takes a while."""
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(folder)], check=True, capture_output=True)
    data = dict(np.load(folder / "digits.npz"))
    data["x_train"], data["y_train"] = np.tile(data["x_train"], (tile, 1)), np.tile(data["y_train"], tile)
    np.savez(folder / "digits.npz", **data)


def manifest(folder: Path, epochs: int, early_stopping: bool) -> Path:
    """The example's manifest as a 27-point grid, with or without ASHA."""
    m = yaml.safe_load((EXAMPLE / "manifest.yml").read_text())
    m["hyperparameters"] = {**SPACE, "epochs": [epochs]}
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


def main() -> None:
    """Run grid and ASHA and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--tile", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_data(tmp / "data", args.tile)
        os.environ["WML_HOME"] = str(tmp / "home")  # the client uploads to the backend's file store
        backend = BackendProcess(tmp / "home", gpus=2, slots=2).start()
        try:
            client = backend.client()
            client.upload(tmp / "data", "digits")
            grid = run(client, manifest(tmp, args.epochs, early_stopping=False))
            asha = run(client, manifest(tmp, args.epochs, early_stopping=True))
        finally:
            backend.close()
    print(f"27 configurations of the digits MLP, {args.epochs} epochs, 2 slots")
    for name, (best, gpu, wall, runs) in (("grid", grid), ("ASHA", asha)):
        print(f"  {name:5} best val_acc {best:.4f}  GPU-seconds {gpu:7.1f}  wall {wall:6.1f} s  runs {runs}")
    print(f"  best val_acc difference   {100 * (grid[0] - asha[0]):+.2f} points (goal: within 0.5)")
    print(f"  GPU-seconds ratio         {asha[1] / grid[1]:.3f} (goal <= 0.40)")
    print("  Ray Tune comparison: not run (ray is not installed here)")


if __name__ == "__main__":
    main()
