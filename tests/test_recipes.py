"""Recipes and `spectra track`: every method trains and is tracked; bad input stops early."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from spectra import recipes
from spectra.errors import SpectraError
from spectra.methods import NAMES as METHODS
from spectra.methods import get
from spectra.recipes import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    PROMPT,
    load_examples,
    load_tokenizer,
    plan,
)

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast

STEPS, EVERY = 4, 2
DEFAULT = recipes.PRESETS["default"]
NOWHERE = Path("/nonexistent-spectra-runs")  # checked by plan(), never written
LAYERS = 8  # q_proj and v_proj of 4 blocks


def _small_data(path, n: int = 32):
    path.write_text("".join(json.dumps(r) + "\n" for r in load_examples(DEFAULT_DATA, n)))
    return path


def _track(tmp, methods, steps: int, every: int):
    """Train ``methods`` on the embedded model with the default preset at smaller batches, and
    one learning rate for both SORSA runs so that only γ tells them apart."""
    small = replace(DEFAULT, sorsa_lr=DEFAULT.lr, batch_size=4, micro_batch=2, max_length=128)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(recipes.PRESETS, "small", small)
        job = plan(methods, data=_small_data(tmp / "qa.jsonl"), steps=steps, every=every,
                   preset="small", device="cpu", out=tmp / "runs", worker="thread")  # fmt: skip
    recipes.run(job)
    return tmp / "runs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every recipe, a few steps each."""
    return _track(tmp_path_factory.mktemp("track"), METHODS, STEPS, EVERY)


@pytest.mark.parametrize("method", METHODS)
def test_recipe_produces_run_and_parquet(runs, method: str) -> None:
    manifest = json.loads((runs / method / "manifest.json").read_text())
    assert manifest["method"] == method and manifest["finished"]
    assert manifest["steps"] == [0, 2, 4]
    assert len(manifest["targets"]) == LAYERS
    rows = pd.read_parquet(runs / f"{method}.parquet")
    assert len(rows) == 3 * LAYERS
    assert set(rows["module"]) == {"q_proj", "v_proj"}
    last = rows[rows["step"] == STEPS]
    assert (last["delta_d"] > 0).all(), "the target weights did not move"
    log = pd.read_parquet(runs / method / "train_log.parquet")
    assert log["loss"].notna().all() and list(log["step"]) == list(range(1, STEPS + 1))
    if method.startswith("sorsa"):
        assert log["reg_loss"].notna().all()
        assert manifest["gamma"] == (0.0 if method == "sorsa-noreg" else DEFAULT.gamma)


def test_regularizer_keeps_factors_orthonormal(tmp_path) -> None:
    """Over a short run, ortho_err ends far lower with γ > 0 than with γ = 0, and is falling.

    (In the first steps Adam moves every factor entry by about lr whatever the size of its
    gradient, and the gradient of the unsquared norm of eq. 4 near zero is a unit direction,
    so the regularized run may briefly be the less orthonormal one.)
    """
    runs = _track(tmp_path, ("sorsa", "sorsa-noreg"), steps=10, every=5)
    reg = pd.read_parquet(runs / "sorsa.parquet").groupby("step")["ortho_err"].mean()
    noreg = pd.read_parquet(runs / "sorsa-noreg.parquet").groupby("step")["ortho_err"].mean()
    assert noreg[10] > noreg[5] > 1e-3
    assert reg[10] < reg[5]
    assert reg[10] < 0.5 * noreg[10]


def test_adalora_allocates_rank_while_it_trains(tmp_path) -> None:
    """The recipe runs peft's budget schedule every step (12 steps: t_init 1, t_final 9, one
    warm-up step at learning rate 0): the rank column shows every λ at 0 until the first
    step that moves them, then all r_init live, then the cubic budget, then the final budget
    from step 4 on, distributed unevenly over the layers."""
    runs = _track(tmp_path, ("adalora",), steps=12, every=1)
    rows = pd.read_parquet(runs / "adalora.parquet")
    rank = rows.pivot(index="step", columns="layer", values="rank")
    init_r, target_r = recipes.adalora_ranks(DEFAULT.rank)
    assert (init_r, target_r) == (24, 16)
    assert (rank.loc[[0, 1]] == 0).all().all()  # λ start at 0; the warm-up step has lr 0
    assert (rank.loc[2] == init_r).all()
    budget = int((init_r - target_r) * LAYERS * 0.5**3 + target_r * LAYERS)  # peft's schedule
    assert rank.loc[3].sum() == budget
    assert (rank.loc[4:].sum(axis=1) == target_r * LAYERS).all()
    assert rank.loc[12].nunique() > 1, "the final budget is the same for every layer"
    live = rows[rows["rank"] > 0]
    assert live["cond_p"].map(math.isfinite).all() and live["cond_p"].ge(1).all()
    assert rows[rows["rank"] == 0]["cond_p"].isna().all()
    manifest = json.loads((runs / "adalora" / "manifest.json").read_text())
    assert manifest["rank"] == init_r


def test_ft_trains_only_the_targets() -> None:
    from transformers import AutoModelForCausalLM

    job = plan(("ft",), steps=1, device="cpu", out=NOWHERE)
    model = recipes.prepare("ft", AutoModelForCausalLM.from_pretrained(job.model), job, 1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == LAYERS
    assert all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in trainable)


def test_prompt_and_response_only_labels() -> None:
    tokenizer = load_tokenizer(str(recipes.DEFAULT_MODEL))
    record = {"query": "Tom has 3 apples and buys 4. How many?", "response": "3 + 4 = 7."}
    data = recipes.SFTDataset([record], tokenizer, max_length=512)
    item = data[0]
    prompt = PROMPT.format(query=record["query"])
    assert prompt.startswith("Below is an instruction that describes a task.")
    assert prompt.endswith("### Instruction:\n" + record["query"] + "\n\n### Response:")
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert item["labels"][:n_prompt] == [-100] * n_prompt
    answer = item["input_ids"][n_prompt:]
    assert item["labels"][n_prompt:] == answer
    assert tokenizer.decode(answer) == " 3 + 4 = 7." + tokenizer.eos_token
    assert len(recipes.SFTDataset([record], tokenizer, max_length=10)[0]["input_ids"]) == 10


def test_presets_match_table_2() -> None:
    p = recipes.PRESETS["paper-analysis"]
    assert (p.lr, p.sorsa_lr, p.gamma, p.rank) == (2e-5, 3e-5, 5e-4, 128)
    assert (p.batch_size, p.max_length, p.epochs, p.steps) == (128, 512, 1, None)
    assert (p.warmup_ratio, p.weight_decay, p.max_grad_norm, p.bf16) == (0.03, 0.0, 0.0, True)
    assert recipes.total_steps(p, 100_000) == 782
    job = plan(("sorsa", "sorsa-noreg", "lora"), preset="paper-analysis", device="cpu",
               out=NOWHERE)  # fmt: skip
    assert (job.lr("sorsa"), job.lr("sorsa-noreg"), job.lr("lora")) == (3e-5, 2e-5, 2e-5)
    assert (job.gamma("sorsa"), job.gamma("sorsa-noreg"), job.gamma("lora")) == (5e-4, 0.0, None)
    args = recipes.training_args(job, "sorsa", "/tmp/unused", 782)
    assert args.gradient_accumulation_steps * args.per_device_train_batch_size == 128
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 24
    assert args.max_grad_norm == 0.0


def test_parse_list() -> None:
    assert recipes.parse_list(["ft,lora", " sorsa ", ""]) == ("ft", "lora", "sorsa")
    assert recipes.parse_list(None) == ()


def _write(path, text: str):
    path.write_text(text)
    return path


def _bad_inputs(tmp_path):
    good = json.dumps({"query": "q?", "response": "r"})
    not_causal = tmp_path / "vit"
    from transformers import AutoConfig

    AutoConfig.for_model("vit").save_pretrained(not_causal)
    return {
        "unknown method": ({"methods": ("ft", "qlora")}, "unknown method 'qlora'"),
        "unknown preset": ({"preset": "fast"}, "unknown preset 'fast'"),
        "missing model": ({"model": tmp_path / "nope"}, "nope: no such model folder"),
        "empty model dir": ({"model": tmp_path}, "not a transformers model"),
        "not a causal LM": ({"model": not_causal}, "not a causal LM"),
        "missing data": ({"data": tmp_path / "none.jsonl"}, "no such data file"),
        "missing field": (
            {"data": _write(tmp_path / "a.jsonl", good + '\n{"query": "q?"}\n')},
            r"a\.jsonl:2: missing or empty string field 'response'",
        ),
        "empty line": (
            {"data": _write(tmp_path / "b.jsonl", good + "\n\n" + good + "\n")},
            r"b\.jsonl:2: empty line",
        ),
        "not json": ({"data": _write(tmp_path / "c.jsonl", "{oops\n")}, "not valid JSON"),
        "empty data": ({"data": _write(tmp_path / "d.jsonl", "")}, "no examples"),
        "rank too large": ({"rank": 257}, r"rank 257 does not fit .*q_proj \(256×256\)"),
        "unknown target": ({"targets": ("qkv",)}, r"targets \['qkv'\] match no module"),
        "steps and epochs": ({"steps": 2, "epochs": 1.0}, "not both"),
        "bad every": ({"every": 0}, "--every must be positive"),
        "unknown device": ({"device": "tpu"}, "unknown device"),
    }


def test_bad_inputs_fail_before_training(tmp_path) -> None:
    out = tmp_path / "runs"
    for name, (kwargs, message) in _bad_inputs(tmp_path).items():
        with pytest.raises(SpectraError, match=message):
            plan(**{"out": out, "device": "cpu", **kwargs})
        assert not out.exists(), name


def test_existing_run_needs_overwrite(tmp_path) -> None:
    (tmp_path / "runs" / "lora").mkdir(parents=True)
    with pytest.raises(SpectraError, match="already exists; pass --overwrite"):
        plan(("lora",), out=tmp_path / "runs", device="cpu")
    assert plan(("lora",), out=tmp_path / "runs", device="cpu", overwrite=True).overwrite


def test_cli_bad_input_exits_2_with_one_line(tmp_path, cli) -> None:
    result = cli(["track", "--method", "ft,bogus", "--out", tmp_path / "runs"])
    assert result.error_line().startswith("error: unknown method 'bogus'")
    assert not (tmp_path / "runs").exists()


def test_cli_track_passes_options(tmp_path, monkeypatch, cli) -> None:
    seen = {}
    monkeypatch.setattr(recipes, "run", lambda job: seen.setdefault("job", job))
    result = cli([
        "track", "--method", "lora", "--method", "sorsa", "--targets", "q_proj",
        "--rank", "4", "--steps", "3", "--every", "1", "--device", "cpu", "--out", tmp_path / "r",
    ])  # fmt: skip
    assert result.code in (0, None)
    job = seen["job"]
    assert job.methods == ("lora", "sorsa") and job.targets == ("q_proj",)
    assert (job.preset.rank, job.preset.steps, job.preset.every) == (4, 3, 1)
    assert job.device == "cpu" and job.out == tmp_path / "r"


@pytest.mark.parametrize("method", ["ft", "lora", "sorsa", "adalora"])
def test_targets_are_resolved_once_and_every_method_gets_that_list(method: str) -> None:
    """One rule: a glob and a dotted suffix select the same modules for peft, SORSA and FT."""
    from transformers import AutoModelForCausalLM

    from spectra.capture import find_targets

    job = plan((method,), targets=("*.layers.0.*.q_proj", "3.self_attn.v_proj"), out=NOWHERE)
    assert job.layers == ("model.layers.0.self_attn.q_proj", "model.layers.3.self_attn.v_proj")
    model = recipes.prepare(method, AutoModelForCausalLM.from_pretrained(job.model), job, 10)
    assert list(find_targets(model, job.layers)) == list(job.layers)
    if method == "ft":
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable == [f"{path}.weight" for path in job.layers]


def test_plan_defaults_to_the_architectures_query_and_value(tmp_path, monkeypatch, cli) -> None:
    """On GPT-2 the default targets are the q and v slices of c_attn; peft receives the module
    once; SORSA refuses a Conv1D before training; --fused reaches the plan."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from spectra.capture import module_paths

    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    load_tokenizer(str(DEFAULT_MODEL)).save_pretrained(tmp_path / "gpt2")  # plan checks for one
    job = plan(("lora",), model=tmp_path / "gpt2", rank=4, out=NOWHERE)
    assert job.layers == tuple(f"transformer.h.{b}.attn.c_attn[{p}]" for b in (0, 1) for p in "qv")
    config = recipes.setup._peft_config(get("lora"), module_paths(job.layers), [], 4, 10)
    assert sorted(config.target_modules) == [f"transformer.h.{b}.attn.c_attn" for b in (0, 1)]
    with pytest.raises(SpectraError, match=r"c_attn is a Conv1D; .* nn.Linear layers \(SORSA\)"):
        plan(("sorsa",), model=tmp_path / "gpt2", rank=4, out=NOWHERE)

    seen = {}
    monkeypatch.setattr(recipes, "run", lambda job: seen.setdefault("job", job))
    cli([
        "track", "--method", "ft", "--model", tmp_path / "gpt2",
        "--targets", "c_proj[v]", "--fused", "attn.c_proj=16,8,8", "--out", NOWHERE,
    ])  # fmt: skip
    assert seen["job"].layers == (
        "transformer.h.0.attn.c_proj[v]",
        "transformer.h.1.attn.c_proj[v]",
    )
    assert seen["job"].fused == (("attn.c_proj", "16,8,8"),)
    with pytest.raises(SpectraError, match="expected MODULE=LAYOUT"):
        recipes.parse_fused(["c_proj"])


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory) -> Path:
    """A tiny Mixtral folder (2 blocks of 4 experts) with the embedded model's tokenizer."""
    import shutil

    from tiny_models import moe_base

    folder = tmp_path_factory.mktemp("mixtral") / "mixtral"
    moe_base("mixtral", vocab_size=2048).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEFAULT_MODEL / name, folder / name)
    return folder


def test_experts_train_with_ft_and_lora(mixtral, tmp_path) -> None:
    """`track --targets experts.down_proj`: FT makes exactly those 3-D parameters trainable,
    LoRA goes through peft's target_parameters; every expert is a layer, step 0 the saved
    model's own expert matrices."""
    import torch
    from transformers import AutoModelForCausalLM

    from spectra.snapshots import open_run

    small = replace(DEFAULT, batch_size=4, micro_batch=2, max_length=128)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(recipes.PRESETS, "small", small)
        job = plan(("ft", "lora"), model=mixtral, data=_small_data(tmp_path / "qa.jsonl"),
                   targets=("experts.down_proj",), rank=2, steps=STEPS, every=EVERY,
                   preset="small", device="cpu", out=tmp_path / "runs",
                   worker="thread")  # fmt: skip
    saved = dict(AutoModelForCausalLM.from_pretrained(mixtral).named_parameters())
    ft = recipes.prepare("ft", AutoModelForCausalLM.from_pretrained(mixtral), job, 1)
    trainable = [name for name, p in ft.named_parameters() if p.requires_grad]
    assert trainable == [f"model.layers.{b}.mlp.experts.down_proj" for b in range(2)]
    recipes.run(job)
    for method in ("ft", "lora"):
        run = open_run(tmp_path / "runs" / method)
        assert run.manifest.finished and run.steps == [0, EVERY, STEPS]
        assert sorted(run.layers) == sorted(job.layers) and len(job.layers) == 8
        assert run.manifest.rank == (2 if method == "lora" else None)
        for layer in run.layers:
            stack, expert = layer[:-3], int(layer[-2])
            assert torch.equal(run.weight(0, layer), saved[stack][expert].detach().double())
        moved = [x for x in run.layers if not torch.equal(run.weight(STEPS, x), run.weight(0, x))]
        assert moved, method


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"methods": ("dora",)}, "is an expert parameter: the recipes train experts with ft or "
                              "lora .*, not dora"),
     ({"methods": ("lora",), "rank": 25}, r"rank 25 does not fit .*down_proj \(4×32×24\)")],
)  # fmt: skip
def test_experts_refuse_other_methods_and_ranks(mixtral, kwargs, message) -> None:
    with pytest.raises(SpectraError, match=message):
        plan(model=mixtral, targets=("experts.down_proj",), device="cpu", out=NOWHERE, **kwargs)
