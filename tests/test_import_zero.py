"""spectra import of DeepSpeed ZeRO-3 checkpoints, against DeepSpeed's own reconstruction.

Three real 2-rank Trainer runs under ZeRO-3 (gloo, CPU; once per module, by
``checkpoint_train.py``): full fine-tuning (one target frozen, so saved as frozen fragments),
LoRA (whose checkpoints hold ``adapter_model.safetensors``, which is used instead of the sharded
states) and full fine-tuning of a tiny Mixtral (3-D expert parameters). The imported
weights must be bit-identical to those of DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint``
for the same checkpoint and the rows those of spectra.drift on them; on synthetic ZeRO-3 folders
of any shapes and world sizes the partitioning rule must give what DeepSpeed's gives.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from checkpoint_train import FROZEN_TARGET, tiny_llama
from helpers import fifo, moved_out
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from sharded import (
    LAYERS,
    STEPS,
    TARGETS,
    assert_one_error_line,
    assert_refused,
    assert_rows_equal_tracked,
    assert_rows_from_weights,
    stored,
    train_sharded,
)
from tiny_models import moe_base, reference_weights

from spectra.capture import split_expert
from spectra.errors import SpectraError
from spectra.importer import import_run
from spectra.importer.zero import open_zero
from spectra.snapshots import open_run

NOT_READ = ("rng_state", "scheduler.pt", "training_args.bin", "zero_to_fp32.py")


def deepspeed_fp32(checkpoint: Path) -> dict[str, torch.Tensor]:
    """DeepSpeed's own reconstruction of a ZeRO checkpoint (pickles loaded in full: the test's)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))


@pytest.fixture(scope="module")
def zero3(tmp_path_factory) -> Path:
    """Trainer + ZeRO-3, full fine-tuning: zero3/checkpoint-{2,4}/global_stepN/."""
    return train_sharded("zero3", tmp_path_factory.mktemp("zero3"))


@pytest.fixture(scope="module")
def zero3_lora(tmp_path_factory) -> Path:
    """Trainer + ZeRO-3 with a LoRA adapter: zero3-lora/checkpoint-{2,4}/."""
    return train_sharded("zero3-lora", tmp_path_factory.mktemp("zero3-lora"))


@pytest.fixture(scope="module")
def zero3_moe(tmp_path_factory) -> Path:
    """Trainer + ZeRO-3, full fine-tuning of a tiny Mixtral: zero3-moe/checkpoint-{2,4}/."""
    return train_sharded("zero3-moe", tmp_path_factory.mktemp("zero3-moe"))


@pytest.mark.slow
def test_zero3_checkpoints_equal_deepspeeds_fp32_weights(zero3, tmp_path):
    run_dir = import_run([zero3 / "zero3"], zero3 / "base", out=tmp_path)
    run = open_run(run_dir)
    assert run.steps == [0, *STEPS] and run.layers == LAYERS and run.manifest.method == "ft"
    base = load_file(zero3 / "base" / "model.safetensors")
    weights = {0: {layer: base[f"{layer}.weight"] for layer in LAYERS}}
    for step in STEPS:
        reference = deepspeed_fp32(zero3 / "zero3" / f"checkpoint-{step}")
        files = stored(run_dir, step)
        for layer in LAYERS:
            got, want = files[f"{layer}/weight"], reference[f"{layer}.weight"]
            assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want), layer
            frozen = layer == FROZEN_TARGET
            assert torch.equal(got, base[f"{layer}.weight"]) == frozen, layer
        weights[step] = {layer: reference[f"{layer}.weight"] for layer in LAYERS}
    assert_rows_from_weights(run_dir, weights)
    assert_rows_equal_tracked(run_dir, zero3)  # the same training, tracked by SpectraCallback
    provenance = run.manifest.extra["import"]
    files = provenance["steps"]["4"]["files"]
    names = {Path(f).name: record for f, record in files.items()}
    assert set(names) == {
        "config.json",
        "latest",
        *(f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for r in (0, 1) for k in ("model", "optim")),
    }
    pieces = names["zero_pp_rank_1_mp_rank_00_optim_states.pt"]["pieces"]
    assert sorted(pieces) == sorted(f"{la}.weight" for la in LAYERS if la != FROZEN_TARGET)
    read = [f for step in provenance["steps"].values() for f in step["files"]]
    assert not any(name in f for f in read for name in NOT_READ)
    assert (run_dir / "train_log.parquet").is_file()


@pytest.mark.slow
def test_compare_reads_zero3_checkpoints(zero3, tmp_path, cli):
    code, out, err = cli(["compare", zero3 / "base", zero3 / "zero3", "--out", tmp_path])
    assert code == 0, err
    assert "Summary" in out and (tmp_path / "zero3.parquet").is_file()
    reference = deepspeed_fp32(zero3 / "zero3" / "checkpoint-4")
    for layer in LAYERS:
        assert torch.equal(stored(tmp_path / "zero3", 4)[f"{layer}/weight"],
                           reference[f"{layer}.weight"])  # fmt: skip


@pytest.mark.slow
def test_zero3_lora_checkpoints_use_the_adapter_file(zero3_lora, tmp_path):
    run_dir = import_run([zero3_lora / "zero3-lora"], zero3_lora / "base", out=tmp_path)
    run = open_run(run_dir)
    assert run.steps == [0, *STEPS] and run.layers == LAYERS and run.manifest.method == "lora"
    for step in run.manifest.extra["import"]["steps"].values():
        assert step["source"].endswith("base") or {Path(f).name for f in step["files"]} == {
            "adapter_config.json",
            "adapter_model.safetensors",
        }
    base = load_file(zero3_lora / "base" / "model.safetensors")
    weights = {0: {layer: base[f"{layer}.weight"] for layer in LAYERS}}
    model = tiny_llama()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS))
    for step in STEPS:
        reference = deepspeed_fp32(zero3_lora / "zero3-lora" / f"checkpoint-{step}")
        factors = {k.replace(".default", ""): v for k, v in reference.items() if "lora_" in k}
        files = stored(run_dir, step)
        for layer in LAYERS:
            prefix = f"base_model.model.{layer}"
            for part, name in (("left", "lora_B"), ("right", "lora_A")):
                want = factors[f"{prefix}.{name}.weight"]
                assert torch.equal(files[f"{layer}/{part}"], want), (step, layer, part)
        peft_model = get_peft_model(copy.deepcopy(model), copy.deepcopy(config))
        set_peft_model_state_dict(peft_model, factors)
        weights[step] = reference_weights(peft_model, "lora", LAYERS)  # peft's merge, float64
    assert_rows_from_weights(run_dir, weights)
    assert_rows_equal_tracked(run_dir, zero3_lora)


# --- DeepSpeed's rule on synthetic ZeRO-3 folders ---------------------------------------------


def write_zero3(folder: Path, world: int, groups, frozen, seed: int = 0) -> dict:
    """A ZeRO-3 checkpoint as DeepSpeed lays it out (``folder/latest`` → ``global_step1/``):
    each parameter's flat elements, padded to a multiple of ``world``, split into equal
    consecutive pieces, rank r's piece in rank r's flat group. Returns the full parameters."""
    gen = torch.Generator().manual_seed(seed)
    full = {}

    def pieces(name, shape):
        full[name] = torch.randn(shape, generator=gen)
        part = math.ceil(math.prod(shape) / world)
        flat = torch.nn.functional.pad(full[name].flatten(), (0, part * world - full[name].numel()))
        return flat.view(world, part)

    flat = [[pieces(n, s) for n, s in group] for group in groups]
    fragments = {n: pieces(n, s) for n, s in frozen}
    tag = folder / "global_step1"
    tag.mkdir(parents=True)
    (folder / "latest").write_text("global_step1")
    for rank in range(world):
        torch.save({
            "module": {}, "buffer_names": [], "shared_params": {}, "ds_version": "0.19.8",
            "dp_world_size": world,
            "param_shapes": [OrderedDict((n, torch.Size(s)) for n, s in g) for g in groups],
            "frozen_param_shapes": OrderedDict((n, torch.Size(s)) for n, s in frozen),
            "frozen_param_fragments": {n: f[rank].clone() for n, f in fragments.items()},
        }, tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")  # fmt: skip
        groups_of_rank = [torch.cat([p[rank] for p in g]) for g in flat]
        optim = {"zero_stage": 3, "partition_count": world, "fp32_flat_groups": groups_of_rank}
        torch.save({"optimizer_state_dict": optim},
                   tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")  # fmt: skip
    return full


SHAPE = st.tuples(st.integers(1, 7), st.integers(1, 7))


@settings(max_examples=25, deadline=None)
@given(
    world=st.integers(1, 4),
    groups=st.lists(st.lists(SHAPE, min_size=1, max_size=4), min_size=1, max_size=3),
    frozen=st.lists(SHAPE, max_size=2),
)
def test_the_partitioning_rule_is_deepspeeds(world, groups, frozen):
    groups = [[(f"g{i}.p{j}.weight", s) for j, s in enumerate(g)] for i, g in enumerate(groups)]
    frozen = [(f"frozen{j}.weight", s) for j, s in enumerate(frozen)]
    with tempfile.TemporaryDirectory() as tmp:
        full = write_zero3(Path(tmp), world, groups, frozen)
        theirs = deepspeed_fp32(Path(tmp))
        ours = open_zero(Path(tmp))
        assert ours.shapes == {name: tuple(t.shape) for name, t in full.items()}
        for name, tensor in full.items():
            got = ours.read(name)
            assert torch.equal(got, theirs[name]) and torch.equal(got, tensor), name


class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["model", "optim"])
def test_a_states_file_payload_is_refused_and_never_run(tmp_path, cli, kind):
    write_zero3(tmp_path / "ckpt", 2, [[("q.weight", (4, 3))]], [])
    marker = tmp_path / "payload-ran"
    target = tmp_path / "ckpt" / "global_step1" / f"zero_pp_rank_1_mp_rank_00_{kind}_states.pt"
    torch.save({"optimizer_state_dict": {"x": Payload(marker)}}, target)
    with pytest.raises(SpectraError, match=r"unsupported GLOBAL posix\.system") as exc:
        open_zero(tmp_path / "ckpt")
    assert str(target) in str(exc.value)
    out = tmp_path / "runs"
    result = cli(["import", tmp_path / "ckpt", "--base", tmp_path / "ckpt", "--out", out])
    assert_one_error_line(result, "unsupported GLOBAL posix.system", out)
    assert not marker.exists()


# --- bad input: one error line each ------------------------------------------------------------


def states(path: Path, change) -> None:
    """Load a DeepSpeed states file in full (the test's own file), change it, save it back."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # noqa: F401  (its classes are in the pickle)

    value = torch.load(path, weights_only=False)
    change(value)
    torch.save(value, path)


def rank(kind: str, r: int = 1, prefix: str = "", mp: int = 0) -> str:
    return f"global_step4/{prefix}zero_pp_rank_{r}_mp_rank_{mp:02d}_{kind}_states.pt"


def optim(change):
    return lambda ck, m: states(ck / rank("optim"), lambda s: change(s["optimizer_state_dict"]))


def model(change):
    return lambda ck, m: states(ck / rank("model", 0), change)


def copy_file(source: str, target: str):
    return lambda ck, m: shutil.copy(ck / source, ck / target)


def write(name: str, data: bytes):
    return lambda ck, m: (ck / name).write_bytes(data)


def shrink(s) -> None:
    s["fp32_flat_groups"][0] = s["fp32_flat_groups"][0][:-1].clone()


Q = "model.layers.0.self_attn.q_proj.weight"
BAD = {
    "missing optim rank": (lambda ck, m: (ck / rank("optim")).unlink(),
                           "world size of 2, but rank 1's is missing (optimizer states"),
    "missing model rank": (lambda ck, m: (ck / rank("model")).unlink(),
                           "rank 1's is missing (model states"),
    "extra rank": (copy_file(rank("optim"), rank("optim", 2)), "rank 2 is one too many"),
    "model parallel": (copy_file(rank("model"), rank("model", 1, mp=1)), "model-parallel rank 1"),
    "bf16 twin": (copy_file(rank("optim"), rank("optim", prefix="bf16_")),
                  "are both rank 1's states"),
    "stage 2": (optim(lambda s: s.update(zero_stage=2)), "ZeRO stage 2"),
    "partition count": (optim(lambda s: s.update(partition_count=3)), "partition_count 3"),
    "flat sizes": (optim(shrink), "but rank 0's hold"),
    "not tensors": (optim(lambda s: s.update(fp32_flat_groups=["x"])),
                    "fp32_flat_groups is not a list of 1-D float tensors"),
    "shapes": (model(lambda s: s["param_shapes"][0].update({Q: torch.Size([47, 33])})),
               "param_shapes group 0 needs"),
    "dp world": (model(lambda s: s.update(dp_world_size=4)), "dp_world_size 4"),
    "frozen fragment": (lambda ck, m: states(ck / rank("model"), lambda s: s[
        "frozen_param_fragments"].update({FROZEN_TARGET + ".weight": torch.zeros(3)})),
                        "no fragment of 264 elements for frozen parameter"),
    "latest": (write("latest", b"global_step9"), "names 'global_step9', which is not a folder"),
    "rank linked out": (lambda ck, m: moved_out(ck / rank("optim")), "links to"),
    "rank a FIFO": (lambda ck, m: fifo(ck / rank("model")), "a FIFO"),
    "latest a FIFO": (lambda ck, m: fifo(ck / "latest"), "a FIFO"),
    "tag linked out": (lambda ck, m: (shutil.move(ck / "global_step4", ck.parent / "elsewhere"),
                                      (ck / "global_step4").symlink_to("../elsewhere")),
                       "links to"),
    "two tags": (lambda ck, m: ((ck / "latest").unlink(), shutil.copytree(
        ck / "global_step4", ck / "global_step2")), "2 global_step folders and no latest file"),
    "garbage": (write(rank("optim"), b"PK\x03\x04 not a zip"),
                "not a DeepSpeed states file that torch.load(weights_only=True) can read"),
    "payload": (lambda ck, m: torch.save({"x": Payload(m)}, ck / rank("optim")),
                "unsupported GLOBAL posix.system"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_zero3_input_is_one_error_line(zero3, tmp_path, cli, capsys, case):
    damage, names = BAD[case]
    capsys.readouterr()
    source = zero3 / "zero3" / "checkpoint-4"
    assert_refused(cli, source, zero3 / "base", damage, names, tmp_path)


@pytest.mark.slow
def test_zero3_checkpoints_of_experts_equal_deepspeeds_fp32_weights(zero3_moe, tmp_path):
    """Every expert of both stacks of both blocks, at every checkpoint, bit-identical to the
    slice of DeepSpeed's reconstruction (the stacks are partitioned as flat fp32 like the rest)."""
    targets = ["experts.gate_up_proj", "experts.down_proj"]
    run = open_run(import_run([zero3_moe / "zero3-moe"], zero3_moe / "base", out=tmp_path,
                              targets=targets))  # fmt: skip
    assert run.steps == [0, *STEPS] and len(run.layers) == 16  # 2 blocks × 2 stacks × 4
    initial = dict(moe_base("mixtral").named_parameters())  # what the base was saved from
    for layer in run.layers:
        stack, expert = split_expert(layer)
        assert torch.equal(run.weight(0, layer), initial[stack][expert].detach().double()), layer
    for step in STEPS:
        reference = deepspeed_fp32(zero3_moe / "zero3-moe" / f"checkpoint-{step}")
        moved = [layer for layer in run.layers
                 if not torch.equal(run.weight(step, layer), run.weight(0, layer))]  # fmt: skip
        assert moved, step  # training moved experts: the test is not of the base alone
        for layer in run.layers:
            stack, expert = split_expert(layer)
            assert torch.equal(run.weight(step, layer), reference[stack][expert].double()), layer
