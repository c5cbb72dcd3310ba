"""The training hyperparameters of ``spectra track``: the fields of a :class:`Preset`, the
named :data:`PRESETS` (the paper's Table 2 and the embedded default scaled down from it), and
AdaLoRA's initial and target rank derived from a preset's rank."""

from __future__ import annotations

import math
from dataclasses import dataclass

ADALORA_INIT = 1.5  # AdaLoRA starts from 1.5 × the target rank (its paper's b(0) = 1.5 b(T))


@dataclass(frozen=True)
class Preset:
    """Training hyperparameters.  ``sorsa_lr`` is the learning rate of regularized SORSA
    (Table 2 gives it a higher one); every other method uses ``lr``."""

    lr: float
    sorsa_lr: float
    gamma: float
    rank: int
    batch_size: int  # examples per optimizer step
    micro_batch: int  # examples per forward pass (batch_size / micro_batch accumulation steps)
    max_length: int
    steps: int | None  # optimizer steps; None trains ``epochs`` epochs
    epochs: float
    every: int  # snapshot interval in optimizer steps
    examples: int | None = None  # use the first N examples only
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # 0: no clipping
    bf16: bool = False  # bf16 mixed precision where the device supports it


PRESETS = {
    # Table 2 (Appendix B.1): the analysis on Llama 2 7B, first 100K MetaMathQA examples.
    "paper-analysis": Preset(
        lr=2e-5, sorsa_lr=3e-5, gamma=5e-4, rank=128, batch_size=128, micro_batch=4,
        max_length=512, steps=None, epochs=1, every=50, examples=100_000, bf16=True,
    ),
    # The embedded default on a CPU in minutes: Table 2 scaled to a 4M-parameter model. Rank
    # 16 of 256 (128 of 4096 is a thin slice too), a learning rate that moves it in 60 steps,
    # SORSA's 1.5× learning rate and the same γ/η_d as Table 2 (5e-4 / 3e-5): under eq. 6 that
    # ratio, not γ alone, weighs the regularizer against the task gradient.
    "default": Preset(
        lr=1e-3, sorsa_lr=1.5e-3, gamma=1.5e-3 * 5e-4 / 3e-5, rank=16, batch_size=8,
        micro_batch=8, max_length=192, steps=60, epochs=1, every=5,
    ),
}  # fmt: skip


def adalora_ranks(rank: int) -> tuple[int, int]:
    """(init_r, target_r) of AdaLoRA for ``rank``: it prunes from 1.5 × rank down to rank."""
    return math.ceil(ADALORA_INIT * rank), rank
