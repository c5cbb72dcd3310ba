"""The sharded reader in one process (a gloo group of one, so no torchrun): under FSDP2 and FSDP1
every method's snapshots equal those of the same model unwrapped, tensor for tensor; each
gather holds one module; a low-rank layer's frozen base is gathered once, never at a step;
layer names carry no wrapper components; the manifest records the engine.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tiny_models import METHODS, base_model, perturb, with_method
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

import spectra
from spectra.callback.engines import DTensorShards
from spectra.capture import layer_path
from spectra.snapshots import Distributed, open_run

TARGETS = ("q_proj", "v_proj")


@pytest.fixture(scope="module", autouse=True)
def group(tmp_path_factory):
    """A gloo process group of this one process."""
    store = dist.FileStore(str(tmp_path_factory.mktemp("store") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def prepared(method: str) -> torch.nn.Module:
    model = with_method(base_model("llama"), method, TARGETS)
    perturb(model)  # nonzero B, E, magnitude: every factor matters
    for param in model.parameters():  # FSDP2 shards contiguous parameters only
        param.data = param.data.contiguous()
    return model


def decoder_layers(model) -> list:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(inner.model.layers)


def track(model, out, steps: int = 2):
    tracker = spectra.Tracker(model, out, TARGETS, every=1, mode="deferred")
    for step in range(1, steps + 1):
        tracker.step(step, loss=1.0)
    tracker.close()
    return open_run(out)


def assert_same_files(sharded, plain) -> None:
    files = sorted(p.name for p in plain.path.glob("*.safetensors"))
    assert files == sorted(p.name for p in sharded.path.glob("*.safetensors"))
    for name in files:
        got, want = load_file(sharded.path / name), load_file(plain.path / name)
        assert got.keys() == want.keys()
        for key, tensor in want.items():
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), (name, key)


@pytest.mark.parametrize("method", METHODS)
def test_fsdp2_snapshots_equal_the_unwrapped_model(method, tmp_path):
    plain = prepared(method)
    sharded = copy.deepcopy(plain)
    for layer in decoder_layers(sharded):
        fully_shard(layer)
    fully_shard(sharded)
    assert type(next(sharded.parameters())).__name__ == "DTensor"
    runs = track(sharded, tmp_path / "sharded"), track(plain, tmp_path / "plain")
    assert runs[0].manifest.distributed == Distributed("fsdp2", 1, "parameters")
    assert runs[1].manifest.distributed is None
    assert runs[0].manifest.targets == runs[1].manifest.targets
    assert runs[0].manifest.method == runs[1].manifest.method
    assert_same_files(*runs)


@pytest.mark.parametrize("method", ["ft", "lora"])
def test_fsdp1_names_have_no_wrapper_components(method, tmp_path):
    """FSDP1 units (one process: NO_SHARD, whole weights) leave no trace in layer names."""
    plain = prepared(method)
    policy = ModuleWrapPolicy({LlamaDecoderLayer})
    sharded = FullyShardedDataParallel(
        copy.deepcopy(plain), device_id=torch.device("cpu"), use_orig_params=True,
        auto_wrap_policy=policy,
    )  # fmt: skip
    runs = track(sharded, tmp_path / "sharded"), track(plain, tmp_path / "plain")
    assert runs[0].layers == runs[1].layers
    assert runs[0].manifest.distributed == Distributed("fsdp1", 1, "parameters")
    assert_same_files(*runs)


def test_steps_gather_one_module_at_a_time_and_never_the_frozen_base(tmp_path, monkeypatch):
    calls: list[list[str]] = []
    gather = DTensorShards.gather

    def recording(self, shards):
        calls.append(list(shards))
        return gather(self, shards)

    monkeypatch.setattr(DTensorShards, "gather", recording)
    model = prepared("lora")
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    tracker = spectra.Tracker(model, tmp_path / "run", TARGETS, every=1, mode="deferred")
    setup = list(calls)  # the frozen file (4 modules), then the step-0 snapshot (4 modules)
    assert len(setup) == 8 and all("base_layer.weight" in names for names in setup[:4])
    calls.clear()
    tracker.step(1)
    tracker.close()
    assert len(calls) == 4  # one call per target module
    for names in calls:
        assert "base_layer.weight" not in names
        assert {"lora_A.default.weight", "lora_B.default.weight"} <= set(names)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("_fsdp_wrapped_module.base_model.model.model.layers.0._fsdp_wrapped_module."
         "_checkpoint_wrapped_module.self_attn.q_proj", "model.layers.0.self_attn.q_proj"),
        ("model.base_model.model.model.layers.1.self_attn.v_proj",
         "model.model.layers.1.self_attn.v_proj"),
        ("_orig_mod.transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_attn"),
        ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj"),
    ],
)  # fmt: skip
def test_layer_path_drops_wrappers_and_the_peft_pair(path, name):
    assert layer_path(path) == name


@pytest.mark.parametrize("engine", ["fsdp1-flat", "fsdp2"])
def test_what_a_step_reads_is_a_copy_training_cannot_change(engine, tmp_path):
    """Also where the engine leaves a module's tensors whole and unregistered (FSDP1 with
    use_orig_params=False in one process: views into its flat parameter; FT, as it wants one
    requires_grad per unit)."""
    model = prepared("lora" if engine == "fsdp2" else "ft")
    if engine == "fsdp2":
        fully_shard(model)
    else:
        model = FullyShardedDataParallel(model, device_id=torch.device("cpu"))
    tracker = spectra.Tracker(model, tmp_path / "run", TARGETS, every=1, mode="deferred")
    parts = tracker._reader.step(tracker._modules)
    kept = {path: {k: t.clone() for k, t in ts.items()} for path, ts in parts.items()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    tracker.close()
    for path, tensors in kept.items():
        for key, tensor in tensors.items():
            assert torch.equal(parts[path][key], tensor), (path, key)
