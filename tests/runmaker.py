"""Hand-made spectra runs with known properties, for the figure, report and notebook tests.

``python tests/runmaker.py OUT`` writes large synthetic runs (32 blocks × 2 modules × 50
steps: FT, LoRA, DoRA, SORSA w/o reg and SORSA) for looking at the figures at real size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from spectra.store import write_rows

Column = Callable[[int, int], float]  # (layer index, step) -> value
BLOCKS, MODULES = 4, ("q_proj", "v_proj")
STEPS = (0, 10, 20, 30, 40)
LAYER = "model.layers.0.self_attn.q_proj"  # the one layer of make_run_dir


def layers(blocks: int = BLOCKS) -> list[tuple[str, int, str]]:
    """(layer path, block, module) of every tracked layer."""
    return [(f"model.layers.{b}.self_attn.{m}", b, m) for b in range(blocks) for m in MODULES]


def parallel(size: float, slope: float = 1.0) -> dict[str, Column]:
    """Every layer moves along the same straight line, at its own speed."""
    return {
        "delta_sigma": lambda i, s: size * (1 + 0.3 * i) * s / 40,
        "delta_d": lambda i, s: size * slope * (1 + 0.3 * i) * s / 40,
    }


def scattered(size: float) -> dict[str, Column]:
    """Layers head in different directions and turn as they go."""

    def angle(i: int, s: int) -> float:
        return 0.1 + 1.3 * ((i * 0.37 + 0.2 * math.sin(i + s / 7)) % 1)

    return {
        "delta_sigma": lambda i, s: size * s / 40 * math.cos(angle(i, s)),
        "delta_d": lambda i, s: size * s / 40 * math.sin(angle(i, s)),
    }


def overlaps(intruders: int, top_k: int = 10) -> list[float]:
    """Best |cos| of the top-k vectors: the last ``intruders`` of them below ε = 0.5."""
    return [0.95 - 0.02 * k if k < top_k - intruders else 0.3 for k in range(top_k)]


def magnitude_direction(sign: int) -> dict[str, Column]:
    """ΔM grows with step and layer; ΔD_dir (> 0) rises (sign 1) or falls (sign −1) with it."""

    def delta_m(i: int, s: int) -> float:
        return 0.01 * (1 + 0.3 * i) * s / 40

    def delta_dir(i: int, s: int) -> float:
        wiggle = 0.0005 * math.sin(3 * i + s)
        return (2 * delta_m(i, s) if sign > 0 else 0.08 / (1 + 50 * delta_m(i, s))) + wiggle

    return {"delta_m": delta_m, "delta_dir": delta_dir}


def make_run(
    root: Path,
    name: str,
    method: str,
    columns: dict[str, Column],
    steps: tuple[int, ...] = STEPS,
    blocks: int = BLOCKS,
    log: bool = True,
) -> Path:
    """Write runs/<name>.parquet (and runs/<name>/train_log.parquet); return the Parquet path."""
    defaults: dict[str, Column] = {
        "delta_d_matched": lambda i, s: 0.5 * columns["delta_d"](i, s),
        "cond_w": lambda i, s: 50.0,
        "cond_p": lambda i, s: math.nan if method == "ft" else 10.0 + 0.1 * s,
        "ortho_err": lambda i, s: 1e-3 * s if method.startswith("sorsa") else math.nan,
        "sigma_max": lambda i, s: 3.0,
        "sigma_min": lambda i, s: 0.06,
        "fro_norm": lambda i, s: 20.0,
        "stable_rank": lambda i, s: 40.0,
        "eff_rank": lambda i, s: 60.0,
        "intruders": lambda i, s: s // 20,
        "rank": lambda i, s: None if method == "ft" else 16,
        "amplification": lambda i, s: math.nan if s == 0 else 5.0 + 0.01 * s,
        **magnitude_direction(1),
    }
    values = defaults | columns
    rows = [
        {"run": name, "method": method, "step": s, "layer": layer, "block": b, "module": m,
         "rows": 64, "cols": 64, **{c: f(i, s) for c, f in values.items()},
         "intruder_overlap": overlaps(values["intruders"](i, s))}
        for s in steps
        for i, (layer, b, m) in enumerate(layers(blocks))
    ]  # fmt: skip
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    if log:
        loss = [2.0 * math.exp(-s / 30) + (0.1 if method == "lora" else 0.0) for s in steps]
        grad_norm = [1 / (1 + s) for s in steps]
        log_rows = {
            "step": steps,
            "loss": loss,
            "reg_loss": 0.0,
            "grad_norm": grad_norm,
            "lr": 1e-4,
        }
        pd.DataFrame(log_rows).to_parquet(run_dir / "train_log.parquet")
    path = root / f"{name}.parquet"
    write_rows(path, pd.DataFrame(rows), {"run": name, "method": method, "run_dir": name})
    return path


def paper_like(root: Path) -> list[Path]:
    """FT, LoRA, SORSA w/o reg and SORSA runs that behave as Section 4.2 says."""
    return [
        make_run(root, "ft", "ft", parallel(0.02, 8.0) | magnitude_direction(-1)),
        make_run(root, "lora", "lora", parallel(0.01, 12.0) | magnitude_direction(1)),
        make_run(root, "sorsa-noreg", "sorsa-noreg", parallel(0.01, 3.0)),
        make_run(
            root, "sorsa", "sorsa", scattered(0.002) | {"cond_p": lambda i, s: 10.0 - 0.05 * s}
        ),
    ]


def damage_tensors(path: Path, **parts) -> None:
    """Replace parts of ``LAYER`` in a safetensors file of a run (None: remove the part)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    for part, value in parts.items():
        tensors.pop(f"{LAYER}/{part}", None)
        if value is not None:
            tensors[f"{LAYER}/{part}"] = value
    save_file(tensors, path)


def make_run_dir(root: Path, name: str, kind: str = "dense", steps=(0, 1), seed: int = 0) -> Path:
    """A tiny finished run directory of one 6×4 layer stored as ``kind`` (rank 2 factors)."""
    import torch

    from spectra.snapshots import Manifest, RunWriter, Target

    g = torch.Generator().manual_seed(seed)
    layer, (m, n, r) = LAYER, (6, 4, 2)
    target = Target(kind, (m, n), None if kind == "dense" else r)
    method = {"dense": "ft", "lowrank": "sorsa", "dora": "dora"}[kind]
    writer = RunWriter(root / name, Manifest(run=name, method=method, targets={layer: target}))
    if kind != "dense":
        writer.write_frozen({layer: {"base": torch.randn(m, n, generator=g)}})
    for step in steps:
        if kind == "dense":
            parts = {"weight": torch.randn(m, n, generator=g)}
        else:
            left, right = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)
            parts = {"left": left, "right": right, "scale": torch.tensor([0.5])}
        if kind == "lowrank":
            parts["values"] = torch.rand(r, generator=g) + 1
        if kind == "dora":
            parts["magnitude"] = torch.rand(m, generator=g) + 1
        writer.write_step(step, {layer: parts})
    writer.finish()
    return root / name


def large(root: Path) -> list[Path]:
    """FT, LoRA and DoRA runs of 32 blocks × 2 modules × 50 steps (0, 10, …, 490)."""
    steps = tuple(range(0, 500, 10))

    def slow(f: Column) -> Column:  # the shapes of the 40-step runs, stretched over 490 steps
        return lambda i, s: f(i, s * 40 / 490)

    shapes = {
        "ft": parallel(0.02, 8.0) | magnitude_direction(-1),
        "lora": parallel(0.01, 12.0) | magnitude_direction(1),
        "dora": scattered(0.01) | magnitude_direction(-1),
    }
    intruders: dict[str, Column] = {"intruders": lambda i, s: min(10, s // 100 + i % 3)}
    return [
        make_run(root, m, m, {c: slow(f) for c, f in columns.items()} | intruders, steps, 32)
        for m, columns in shapes.items()
    ]


def gallery(root: Path) -> list[Path]:
    """:func:`large`'s runs and a SORSA pair of the same size, for looking at every figure."""
    steps = tuple(range(0, 500, 10))
    few: dict[str, Column] = {"intruders": lambda i, s: min(10, s // 245 + i % 2)}
    sorsa = {
        "sorsa-noreg": parallel(0.01, 3.0) | few,
        "sorsa": scattered(0.002) | few | {"cond_p": lambda i, s: 10.0 - 0.05 * s * 40 / 490},
    }
    return large(root) + [make_run(root, m, m, cols, steps, 32) for m, cols in sorsa.items()]


if __name__ == "__main__":
    import sys

    for path in gallery(Path(sys.argv[1])):
        print(path)
