"""A tiny training script for tests: logs metrics, writes results, optionally sleeps or fails."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from wml_jupyter import run

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()
hp = run.hparams()
result_dir = Path(os.environ["RESULT_DIR"])
(result_dir / "started.txt").write_text("started\n")
print(f"tiny training with lr={args.lr}", flush=True)
for step in range(1, int(hp.get("steps", 3)) + 1):
    run.log(step=step, loss=1.0 / step, acc=args.lr * step)
    print(f"step {step}", flush=True)
    time.sleep(float(hp.get("sleep", 0)))
names = ["DATA_DIR", "RESULT_DIR", "LOG_DIR", "JOB_STATE_DIR", "CHECKPOINT_DIR", "MODEL_DIR", "TRAINING_ID",
         "GPU_COUNT", "NUM_LEARNERS", "LEARNER_ID", "WML_EXPERIMENT_ID", "WML_HPARAMS", "CUDA_VISIBLE_DEVICES",
         "WML_RUNNER_TOKEN"]
(result_dir / "env.json").write_text(json.dumps({n: os.environ.get(n) for n in names}))
data = Path(os.environ["DATA_DIR"]) / "data.txt"
(result_dir / "data-seen.txt").write_text(data.read_text() if data.exists() else "no data")
if int(hp.get("exit", 0)):
    print("something went badly wrong", flush=True)
    sys.exit(int(hp["exit"]))
