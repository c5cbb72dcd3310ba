"""Import by reference (spectra.importer.references, spectra.snapshots.references): steps of
full weights in local safetensors files stay there; compute reads them in place, checked."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from tiny_models import base_model, perturb

from spectra.columns import KEY, METRICS
from spectra.engine import compute_run
from spectra.errors import SpectraError
from spectra.importer import import_run
from spectra.run_files import MANIFEST, reference_file, step_file
from spectra.snapshots import RunWriter, open_run
from spectra.snapshots.references import key_path

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A base (one file) and a Trainer-like output folder of two sharded checkpoints."""
    root = tmp_path_factory.mktemp("ref")
    model = base_model("llama")
    model.save_pretrained(root / "base")
    for step in (2, 4):
        perturb(model, seed=step, size=0.05)
        model.save_pretrained(root / "out" / f"checkpoint-{step}", max_shard_size="40KB")
    return root


@pytest.fixture
def sources(trained, tmp_path) -> Path:
    """A fresh copy of the models, free to change."""
    shutil.copytree(trained, tmp_path / "src")
    return tmp_path / "src"


def rows(run_dir: Path) -> pd.DataFrame:
    frame = pd.read_parquet(compute_run(run_dir)).sort_values(KEY).reset_index(drop=True)
    return frame[[*KEY, *METRICS]]


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_by_reference_gives_the_rows_of_a_copy(sources, tmp_path):
    referenced = import_run([sources / "out"], sources / "base", out=tmp_path / "runs")
    copied = import_run([sources / "out"], sources / "base", out=tmp_path / "runs", name="copy",
                        copy=True)  # fmt: skip
    ref, cop = open_run(referenced), open_run(copied)
    assert ref.steps == cop.steps == [0, 2, 4]
    assert ref.manifest.referenced == [0, 2, 4] and ref.manifest.format == 2
    assert cop.manifest.referenced == [] and cop.manifest.format == 1
    assert "referenced" not in (copied / MANIFEST).read_text()  # spectra 0.1 reads it
    assert not list(referenced.glob("step_*.safetensors"))
    assert all((copied / step_file(s)).is_file() for s in cop.steps)
    for step in ref.steps:
        for layer in ref.layers:
            assert torch.equal(ref.weight(step, layer), cop.weight(step, layer))
    pd.testing.assert_frame_equal(rows(referenced), rows(copied), check_exact=True)
    assert size(referenced) * 4 < size(copied)
    ref = json.loads((referenced / reference_file(2)).read_text())["tensors"][f"{Q0}/weight"]
    shard = _shard_of(sources / "out" / "checkpoint-2", f"{Q0}.weight")
    assert (ref["file"], ref["tensor"], ref["transposed"]) == (str(shard), f"{Q0}.weight", False)
    assert key_path().stat().st_mode & 0o777 == 0o600


def test_several_fine_tunes_of_one_base_in_one_summary(sources, tmp_path, cli):
    """compare base ft1 ft2: one run each, one summary; the base is referenced, never copied."""
    tuned = sources / "tuned"
    shutil.copytree(sources / "out" / "checkpoint-2", tuned / "ft-a")
    shutil.copytree(sources / "out" / "checkpoint-4", tuned / "ft-b")
    code, out, err = cli(["compare", sources / "base", tuned / "ft-a", tuned / "ft-b",
                          "--out", tmp_path / "runs"])  # fmt: skip
    assert code == 0, err
    assert "ft-a" in out and "ft-b" in out and out.count("Summary at") == 1
    for name, step in (("ft-a", 2), ("ft-b", 4)):
        run = open_run(tmp_path / "runs" / name)
        assert run.manifest.referenced == [0, 1]
        checkpoint = sources / "out" / f"checkpoint-{step}"
        with_copy = import_run([checkpoint], sources / "base", out=tmp_path / "copies",
                               name=name, steps=[1], copy=True)  # fmt: skip
        got = pd.read_parquet(tmp_path / "runs" / f"{name}.parquet").sort_values(KEY)
        pd.testing.assert_frame_equal(got[[*KEY, *METRICS]].reset_index(drop=True),
                                      rows(with_copy), check_exact=True)  # fmt: skip
    twice = ["compare", sources / "base", tuned / "ft-a", tuned / "ft-a", "--out", tmp_path / "r2"]
    cli(twice).error_line("would both be run ft-a")


def _flip_tensor_byte(file: Path, name: str) -> None:
    with file.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        start = json.loads(f.read(length))[name]["data_offsets"][0]
    with file.open("r+b") as f:
        f.seek(8 + length + start)
        byte = f.read(1)
        f.seek(8 + length + start)
        f.write(bytes([byte[0] ^ 1]))


def _shard_of(folder: Path, name: str) -> Path:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder / index["weight_map"][name]


CHANGES = {
    "tensor bytes": (lambda f: _flip_tensor_byte(f, f"{Q0}.weight"),
                     f"changed since the import (the bytes of {Q0}.weight)"),
    "header": (lambda f: save_file(load_file(f), f, metadata={"format": "pt", "x": "y"}),
               "changed since the import (its header)"),
    "truncated": (lambda f: f.write_bytes(f.read_bytes()[:4]), "changed since the import"),
    "deleted": (lambda f: f.unlink(), "is gone"),
    "a folder now": (lambda f: (f.unlink(), f.mkdir()), "is not a regular file"),
}  # fmt: skip


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_or_vanished_source_is_one_line_at_compute(sources, tmp_path, cli, change):
    run_dir = import_run([sources / "out"], sources / "base", out=tmp_path / "runs")
    copied = import_run([sources / "out"], sources / "base", out=tmp_path / "runs", name="copy",
                        copy=True)  # fmt: skip
    do, says = CHANGES[change]
    shard = _shard_of(sources / "out" / "checkpoint-4", f"{Q0}.weight")
    do(shard)
    cli(["compute", run_dir]).error_line(says, str(shard))
    assert cli(["compute", copied])[0] == 0  # a copy does not depend on its sources


def test_crafted_references_are_refused_before_any_file_is_opened(
    sources, tmp_path, cli, monkeypatch
):
    """A reference file is followed only under this user's MAC: pointing it at another file,
    or taking the run to another user (key), is refused and the file is never opened."""
    run_dir = import_run([sources / "out"], sources / "base", out=tmp_path / "runs")
    secret = tmp_path / "secret.safetensors"
    save_file({"w": torch.ones(2, 2)}, secret)
    path = run_dir / reference_file(2)
    crafted = json.loads(path.read_text())
    crafted["tensors"][f"{Q0}/weight"]["file"] = str(secret)
    path.write_text(json.dumps(crafted))
    opened = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1]
    )
    failed = cli(["compute", run_dir])
    monkeypatch.setattr(os, "open", real_open)
    failed.error_line("not written by this user's spectra import for this run")
    assert str(secret) not in opened
    path.write_text(json.dumps(crafted | {"mac": "\x80é"}))  # a MAC that is not even hex
    cli(["compute", run_dir]).error_line("not written by this user's spectra import")

    other = import_run([sources / "out"], sources / "base", out=tmp_path / "runs", name="other")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    cli(["compute", other]).error_line("no reference key")


@pytest.mark.slow  # fuzzing: 40 imports
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_change_to_a_reference_file_is_refused(trained, tmp_path_factory, data):
    """Whatever a reference file is changed to, reading the step is a SpectraError."""
    root = tmp_path_factory.mktemp("fuzz")
    run_dir = import_run([trained / "out" / "checkpoint-2"], trained / "base", out=root)
    path = run_dir / reference_file(2)
    raw = json.loads(path.read_text())
    entry = raw["tensors"][f"{Q0}/weight"]
    other = str(trained / "base" / "model.safetensors")
    values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                       st.just(other), st.just([]))  # fmt: skip
    where = data.draw(st.sampled_from(["step", "mac", "tensors", *[f"entry.{k}" for k in entry]]))
    value = data.draw(values.filter(lambda v: v != (raw.get(where) if "." not in where
                                                   else entry[where.split(".")[1]])))  # fmt: skip
    if where.startswith("entry."):
        entry[where.split(".")[1]] = value
    else:
        raw[where] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(SpectraError):
        open_run(run_dir).weight(2, Q0)


def test_adapters_and_torch_save_files_are_copied(sources, tmp_path):
    """Only steps of full weights in safetensors files are referenced."""
    targets = ("q_proj.weight", "v_proj.weight")
    weights = {k: v for f in (sources / "out" / "checkpoint-4").glob("*.safetensors")
               for k, v in load_file(f).items() if k.endswith(targets)}  # fmt: skip
    torch.save(weights, tmp_path / "step.pt")
    run = open_run(import_run([tmp_path / "step.pt"], sources / "base", out=tmp_path / "runs"))
    assert run.manifest.referenced == [0] and (run.path / step_file(1)).is_file()

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(base_model("llama")), LoraConfig(r=2, target_modules=["q_proj"])
    )
    perturb(model)
    model.save_pretrained(tmp_path / "adapter")
    run = open_run(import_run([tmp_path / "adapter"], sources / "base", out=tmp_path / "runs"))
    assert run.manifest.referenced == [] and (run.path / step_file(1)).is_file()


def test_manifests_listing_references_are_checked(sources, tmp_path):
    run_dir = import_run([sources / "out"], sources / "base", out=tmp_path / "runs")
    manifest = json.loads((run_dir / MANIFEST).read_text())
    for change, says in (({"referenced": [0, 7]}, "lists steps that steps does not"),
                         ({"format": 1}, "needs format 2"),
                         ({"format": 3}, "reads up to 2")):  # fmt: skip
        (run_dir / MANIFEST).write_text(json.dumps(manifest | change))
        with pytest.raises(SpectraError, match=says):
            open_run(run_dir)


@pytest.mark.slow
def test_a_resumed_writer_keeps_the_steps_stored_by_reference(sources, tmp_path):
    """RunWriter(resume=True) with a fresh manifest (as Tracker resuming gives) keeps which
    steps are references; discarding the steps after 2 removes their references too."""
    run_dir = import_run([sources / "out"], sources / "base", out=tmp_path / "runs")
    before = rows(run_dir)
    fresh = copy.deepcopy(open_run(run_dir).manifest)
    fresh.referenced, fresh.format, fresh.steps = [], 1, []
    writer = RunWriter(run_dir, fresh, resume=True)
    resumed = open_run(run_dir).manifest
    assert resumed.referenced == [0, 2, 4] and resumed.format == 2
    pd.testing.assert_frame_equal(rows(run_dir), before, check_exact=True)
    writer.discard_after(2)
    assert open_run(run_dir).manifest.referenced == [0, 2]
    assert not (run_dir / reference_file(4)).exists() and (run_dir / reference_file(2)).is_file()
    pd.testing.assert_frame_equal(rows(run_dir), before[before["step"] <= 2], check_exact=True)
