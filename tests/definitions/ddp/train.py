"""Two learners find each other through torch.distributed (gloo) and all-reduce a tensor.

With hparam fail_rank set, that rank exits 1 after the rendezvous while the other waits.
"""

import os
import sys
import time

import torch
import torch.distributed as dist

from wml_jupyter import run

hp = run.hparams()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
print(f"learner {os.environ['LEARNER_ID']} is rank {rank} of {world} "
      f"(node {os.environ['NODE_RANK']}, local rank {os.environ['LOCAL_RANK']})", flush=True)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"all_reduce sum = {value.item():g}", flush=True)
if "fail_rank" in hp:
    if rank == int(hp["fail_rank"]):
        print("this learner fails", flush=True)
        # Left to interpreter exit, torch's gloo teardown sometimes aborts (SIGABRT) instead.
        dist.destroy_process_group()
        sys.exit(1)
    time.sleep(60)
if rank == 0:
    run.log(step=1, total=value.item())
dist.destroy_process_group()
