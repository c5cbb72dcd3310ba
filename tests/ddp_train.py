"""A tiny LoRA Llama trained with plain SGD, tracked by spectra: under torchrun (DDP, gloo,
CPU) every rank trains on its shard of each batch; without torchrun one process trains on
the whole batch, which gives the same gradients.

    torchrun --standalone --nproc_per_node 2 tests/ddp_train.py OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from ranks import finish, watch  # the script's folder is on sys.path
from tiny_models import base_model, batch, with_method
from torch.nn.parallel import DistributedDataParallel

import spectra

TARGETS = ("q_proj", "v_proj")
STEPS, EVERY = 4, 2


def train(out: str | Path) -> None:
    """Train STEPS steps and track them into ``out`` (under DDP when launched by torchrun)."""
    distributed = "RANK" in os.environ
    if distributed:
        watch()
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    model = with_method(base_model("llama"), "lora", TARGETS)
    net = DistributedDataParallel(model) if distributed else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    tracker = spectra.Tracker(net, out, TARGETS, every=EVERY, mode="deferred")
    if tracker.writing != (rank == 0):
        raise SystemExit(f"rank {rank}: writing={tracker.writing}")
    for step in range(1, STEPS + 1):
        shard = batch(step, size=4)[rank::world]
        loss = net(input_ids=shard, labels=shard).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        tracker.step(step, loss=loss.detach())
    tracker.close()
    if distributed:
        del net  # DDP's reducer must go before its process group, or gloo can hang at exit
        finish()


if __name__ == "__main__":
    train(sys.argv[1])
