"""Trains 6 steps, saving a checkpoint after each; the first attempt dies after step 3."""

import json
import os
import sys
from pathlib import Path

from wml_jupyter import run

checkpoint = Path(os.environ["CHECKPOINT_DIR"]) / "state.json"
start = json.loads(checkpoint.read_text())["step"] + 1 if checkpoint.exists() else 1
print(f"attempt {os.environ['WML_ATTEMPT']} starts at step {start}", flush=True)
for step in range(start, 7):
    run.log(step=step, acc=step / 6)
    checkpoint.write_text(json.dumps({"step": step}))
    if step == 3 and os.environ["WML_ATTEMPT"] == "1":
        print("the node went away", flush=True)
        run.flush()
        sys.exit(1)
(Path(os.environ["RESULT_DIR"]) / "resumed_at.txt").write_text(str(start))
