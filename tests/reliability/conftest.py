"""The reliability campaign reuses the end-to-end helpers of tests/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
