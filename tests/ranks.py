"""The start and end of a rank in the torchrun test scripts (gloo, CPU); free of pytest."""

from __future__ import annotations

import faulthandler
import os
import sys

import torch.distributed as dist


def watch() -> None:
    """A rank killed by a fatal signal (SIGABRT, SIGSEGV) prints every thread's Python stack."""
    faulthandler.enable()


def finish() -> None:
    """Wait for every rank, destroy the process group and exit at once, skipping the
    interpreter's finalization, where the last references to FSDP's meshes and gloo's work
    are dropped: a teardown that can abort in gloo ("terminate called without an active
    exception", SIGABRT; seen once in CI, in a rank of the DCP training)."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
