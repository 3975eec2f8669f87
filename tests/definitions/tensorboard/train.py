"""Writes scalars with PyTorch's TensorBoard writer only (no run.log), as FfDL-era code did."""

import os

from torch.utils.tensorboard import SummaryWriter

writer = SummaryWriter(os.path.expandvars("$JOB_STATE_DIR/logs/tb"))
for step in range(1, 6):
    writer.add_scalar("accuracy", 0.5 + step / 10, step)
    writer.add_scalar("loss", 1.0 / step, step)
writer.close()
