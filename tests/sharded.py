"""For the sharded-checkpoint import tests: 2-rank training runs, reference rows, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from helpers import torchrun
from safetensors.torch import load_file

from spectra.columns import KEY, METRICS
from spectra.engine import compute_run
from spectra.metrics import drift
from spectra.run_files import step_file
from spectra.snapshots import open_run

SCRIPT = Path(__file__).with_name("checkpoint_train.py")
TOL = 1e-10
TARGETS = ("q_proj", "v_proj")
STEPS = (2, 4)  # the checkpoints of every 2-rank training
LAYERS = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in TARGETS]


def train_sharded(kind: str, root: Path) -> Path:
    """``checkpoint_train.py KIND root`` under torchrun, 2 processes (gloo, CPU); returns root."""
    env = {"DS_ACCELERATOR": "cpu"}
    assert torchrun(SCRIPT, kind, out=root, timeout=600, env=env) == 0, kind
    return root


def assert_rows_from_weights(run_dir: Path, weights: dict[int, dict[str, torch.Tensor]]) -> None:
    """The run's computed rows are spectra.drift of (step 0, step t) of ``weights`` — {step:
    {layer: W}} — in float64, within TOL, for every layer and step."""
    rows = pd.read_parquet(compute_run(run_dir))
    layers = open_run(run_dir).layers
    assert sorted(set(rows["step"])) == sorted(weights)
    assert len(rows) == len(weights) * len(layers)
    for step, state in weights.items():
        for layer in layers:
            want = drift(weights[0][layer].double(), state[layer].double())
            row = rows[(rows["step"] == step) & (rows["layer"] == layer)].iloc[0]
            for name, value in want.items():
                assert np.allclose(row[name], value, rtol=0, atol=TOL, equal_nan=True), (
                    name, step, layer,
                )  # fmt: skip


def assert_rows_equal_tracked(imported: Path, root: Path) -> None:
    """The computed rows of an imported run equal those of the tracked run of the same
    training (``root/tracked``, step 0 and every checkpoint's step), column by column."""
    got = pd.read_parquet(compute_run(imported)).set_index(KEY).sort_index()
    want = pd.read_parquet(compute_run(root / "tracked")).set_index(KEY).sort_index()
    assert got.index.tolist() == want.index.tolist()
    for name in METRICS:
        assert np.allclose(got[name], want[name], rtol=0, atol=TOL, equal_nan=True), name
    assert (got["intruders"] == want["intruders"]).all()


def stored(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """{layer/part: tensor} of one step file of a run, as stored."""
    return load_file(run_dir / step_file(step))


def assert_refused(cli, source: Path, base: Path, damage, names: str, tmp_path: Path) -> None:
    """A copy of the checkpoint folder ``source``, damaged by ``damage(folder, marker)``, is
    refused by ``spectra import`` with one line naming ``names``, leaving no run, and a payload
    in it never ran (``marker`` is not there)."""
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(source, folder)
    marker = tmp_path / "payload-ran"
    damage(folder, marker)
    out = tmp_path / "runs"
    result = cli(["import", folder, "--base", base, "--out", out, "--name", "run"])
    assert_one_error_line(result, names, out)
    assert not marker.exists()


def assert_one_error_line(result, names: str, out: Path) -> None:
    """A CLI result is exit 2 with one ``error:`` line naming ``names``, and no run was left in
    ``out``."""
    result.error_line(names)
    assert not out.exists() or not list(out.iterdir())
