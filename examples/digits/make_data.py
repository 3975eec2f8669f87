"""Write scikit-learn's digits (bundled, no download) as DEST/digits.npz, split for training."""

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

dest = Path(sys.argv[1] if len(sys.argv) > 1 else "digits-data")
dest.mkdir(parents=True, exist_ok=True)
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)
order = np.random.default_rng(0).permutation(len(x))
cut = int(0.8 * len(x))
np.savez(dest / "digits.npz", x_train=x[order[:cut]], y_train=y[order[:cut]],
         x_val=x[order[cut:]], y_val=y[order[cut:]])
print(f"wrote {dest / 'digits.npz'}: {cut} training and {len(x) - cut} validation images")
