"""A torchrun script for the tests of ``helpers.torchrun``: ``OUT/runs`` counts the launches;
rank 1 aborts (SIGABRT) in the launches listed in ``ABORT_IN`` (e.g. "1"), or raises a Python
error in those of ``RAISE_IN``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch.distributed as dist
from ranks import finish, watch

if __name__ == "__main__":
    watch()
    dist.init_process_group("gloo")
    out, rank = Path(sys.argv[1]), dist.get_rank()
    counter = out.parent / f"{out.name}.launches"  # outside OUT, which a retry empties
    dist.barrier()
    if rank == 0:
        counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
        (out / "written").mkdir(parents=True, exist_ok=True)
    dist.barrier()
    launch = counter.read_text()
    if rank == 1 and launch in os.environ.get("ABORT_IN", "").split(","):
        os.abort()
    if rank == 1 and launch in os.environ.get("RAISE_IN", "").split(","):
        raise RuntimeError(f"launch {launch}")
    finish()
