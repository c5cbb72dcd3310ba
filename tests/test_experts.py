"""MoE experts stored as 3-D parameters (transformers 5): every expert a layer, captured for FT
and for LoRA on the parameters (peft's target_parameters), against peft's float64 merge and
against the experts module's own forward, on tiny Mixtral, Qwen2-MoE, Qwen3-MoE and GPT-OSS
(the one that stores its experts transposed, [E, in, out], with interleaved gate and up)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import relative_error
from tiny_models import EXPERT_PARAMS, MOE, expert_weights, moe_model, perturb

from spectra.callback import Tracker
from spectra.capture import PEFT_PREFIX, find_layers, layout, matches, split_expert, split_slice
from spectra.engine import compute_run
from spectra.errors import SpectraError
from spectra.factors import effective_weight
from spectra.metrics import drift
from spectra.snapshots import Manifest, open_run
from spectra.store import read_run


def captured(model, targets=EXPERT_PARAMS) -> dict[str, torch.Tensor]:
    """Each selected expert's W_t as spectra captures it (its stacked parts, expert e)."""
    out = {}
    for name, layer in find_layers(model, targets).items():
        found = layout(layer.module)
        parts = {
            k: v[layer.expert] if v.ndim == 3 else v for k, v in (found.frozen | found.step).items()
        }
        out[name] = effective_weight(found.kind, parts)
    return out


def experts_of(model):
    """The first transformers experts module of a model."""
    return next(m for m in model.modules() if hasattr(m, "is_transposed"))


@pytest.mark.parametrize("method", ["ft", "lora"])
@pytest.mark.parametrize("arch", list(MOE))
def test_experts_equal_the_merge_and_the_modules_own_forward(arch, method):
    model = moe_model(arch, method)
    got, want = captured(model), expert_weights(model, method)
    experts = MOE[arch][2].get("num_local_experts") or MOE[arch][2]["num_experts"]
    assert len(got) == 2 * 2 * experts == len(want)  # 2 blocks × 2 parameters × E
    for name, w in got.items():
        assert w.dtype == torch.float64 and relative_error(w, want[name]) <= 1e-12, name
    double = copy.deepcopy(model).double()
    double.config._experts_implementation = "eager"  # the experts' own loop (float64)
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for path, module in double.named_modules():
        if not isinstance(module, type(experts_of(double))):
            continue
        outer_path = path.removesuffix(".base_layer.base_layer")  # LoRA: the ParamWrappers
        outer, layer = double.get_submodule(outer_path), outer_path.removeprefix(PEFT_PREFIX)
        x = torch.randn(6, 32, generator=gen, dtype=torch.float64)
        for e in range(experts):
            index, weight = torch.full((6, 1), e), torch.ones(6, 1, dtype=torch.float64)
            y = outer(x, index, weight)  # through peft's ParamWrappers when LoRA
            gate_up = x @ got[f"{layer}.gate_up_proj[{e}]"].T
            bias = getattr(module, "gate_up_proj_bias", None)
            gated = module._apply_gate(gate_up + (bias[e] if bias is not None else 0))
            out = gated @ got[f"{layer}.down_proj[{e}]"].T
            bias = getattr(module, "down_proj_bias", None)
            out = out + (bias[e] if bias is not None else 0)
            assert relative_error(y.detach(), out.detach()) <= 1e-12, (layer, e)
            checked += 1
    assert checked == 2 * experts


def test_layer_names_and_targets():
    model = moe_model("mixtral", "ft")
    one = find_layers(model, ["experts.down_proj[3]"])
    assert list(one) == [f"model.layers.{b}.mlp.experts.down_proj[3]" for b in (0, 1)]
    assert one["model.layers.0.mlp.experts.down_proj[3]"].expert == 3
    every = find_layers(model, ["model.layers.1.mlp.experts.gate_up_proj"])
    assert list(every) == [f"model.layers.1.mlp.experts.gate_up_proj[{e}]" for e in range(4)]
    assert len(find_layers(model, ["down_proj"])) == 2 * 4  # a suffix: every expert of both
    assert split_expert("a.experts.down_proj[12]") == ("a.experts.down_proj", 12)
    assert split_expert("h.0.attn.c_attn[q]") == ("h.0.attn.c_attn[q]", None)
    assert split_slice("a.experts.down_proj[3]") == ("a.experts.down_proj[3]", None)
    assert matches("experts.down_proj[3]", "m.0.experts.down_proj[3]")
    assert not matches("experts.down_proj[3]", "m.0.experts.down_proj[13]")
    assert not matches("c_attn[q]", "m.0.experts.down_proj[3]")
    assert list(find_layers(model, None)) == [
        f"model.layers.{b}.self_attn.{m}" for b in (0, 1) for m in ("q_proj", "v_proj")
    ]  # the default targets stay the query and value projections


@pytest.mark.parametrize(("arch", "method"), [("mixtral", "ft"), ("qwen2_moe", "lora")])
def test_tracked_runs_of_experts(tmp_path, arch, method):
    model = moe_model(arch, method)
    targets = list(EXPERT_PARAMS) if method == "ft" else None  # LoRA: the adapted parameters
    truth = {0: expert_weights(model, method)}
    with Tracker(model, tmp_path / arch, targets=targets, every=1, mode="deferred") as tracker:
        perturb(model, seed=7, size=0.05)
        truth[1] = expert_weights(model, method)
        tracker.step(1)
    run = open_run(tmp_path / arch)
    assert run.manifest.method == method and len(run.layers) == 16
    target = run.manifest.targets["model.layers.1.mlp.experts.down_proj[2]"]
    assert (target.source, target.expert) == ("model.layers.1.mlp.experts.down_proj", 2)
    for step, weights in truth.items():
        for layer in run.layers:
            assert relative_error(run.weight(step, layer), weights[layer]) <= 1e-6  # float32
    rows, _ = read_run(compute_run(tmp_path / arch))
    assert set(rows["module"]) == {"gate_up_proj", "down_proj"}
    row = rows[(rows.step == 1) & (rows.layer == "model.layers.0.mlp.experts.gate_up_proj[1]")]
    w0, wt = (run.weight(s, row.layer.iloc[0]).numpy() for s in (0, 1))
    want = drift(w0, wt)
    for key in ("delta_sigma", "delta_d", "delta_d_matched", "eff_rank"):
        assert row[key].iloc[0] == pytest.approx(want[key], rel=1e-10, abs=1e-12), key


def test_manifests_without_expert_indices_still_read():
    old = {"run": "r", "method": "ft", "targets": {"a.q": {"kind": "dense", "shape": [4, 3]}}}
    manifest = Manifest.from_json(json.dumps(old))
    assert manifest.targets["a.q"].expert is None
    bad = old | {"targets": {"a.q[1]": {"kind": "dense", "shape": [4, 3], "expert": 1}}}
    with pytest.raises(SpectraError, match="expert"):
        Manifest.from_json(json.dumps(bad))  # an expert needs its source
