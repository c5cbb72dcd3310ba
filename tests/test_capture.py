"""Captured effective weights against each method's own float64 merge (peft's, for peft layers)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import relative_error
from peft import LoraConfig
from tiny_models import ARCH_TARGETS, base_model, perturb, reference_weights, with_method

from spectra.capture import (
    detect_method,
    find_layers,
    find_targets,
    layout,
    matches,
    module_paths,
)
from spectra.errors import SpectraError
from spectra.factors import effective_weight, slice_rows

CASES = [("llama", m) for m in ("ft", "lora", "pissa", "dora", "adalora", "sorsa")] + [
    ("gpt2", "ft"), ("gpt2", "lora"), ("gpt2", "dora"), ("gpt2", "adalora"),
    ("bert", "lora"), ("bert", "pissa"), ("bert", "sorsa"),
]  # fmt: skip


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_effective_weight_equals_the_methods_float64_merge(arch, method):
    targets = ARCH_TARGETS[arch]
    model = with_method(base_model(arch), method, targets)
    perturb(model)
    layers = find_layers(model, targets)
    paths = module_paths(layers)
    assert len(paths) == 2 * len(targets)  # two blocks
    layouts = {layer.path: layout(layer.module) for layer in layers.values()}
    assert detect_method(model, layouts) == method
    expected = reference_weights(model, method, paths)
    for name, layer in layers.items():  # GPT-2's c_attn: its q, k and v slices
        found = layouts[layer.path]
        parts, want = found.frozen | found.step, expected[layer.path]
        if layer.rows is not None:
            parts, want = (
                slice_rows(parts, layer.rows),
                torch.cat([want[a:b] for a, b in layer.rows]),
            )
        got = effective_weight(found.kind, parts)
        assert got.dtype == torch.float64
        assert got.shape == want.shape
        assert relative_error(got, want) <= 1e-12, name


def test_peft_layers_are_matched_not_their_insides():
    model = with_method(base_model("llama"), "lora", ("q_proj", "v_proj"))
    layers = find_targets(model, ("q_proj", "v_proj"))
    assert list(layers) == [
        f"model.layers.{b}.self_attn.{m}" for b in (0, 1) for m in ("q_proj", "v_proj")
    ]
    assert find_targets(model, "*q_proj*").keys() == {
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"
    }  # fmt: skip
    with pytest.raises(SpectraError, match="base_layer"):
        find_targets(model, "base_layer")


def test_target_forms():
    model = base_model("llama")
    assert list(find_targets(model, "model.layers.1.self_attn.q_proj")) == [
        "model.layers.1.self_attn.q_proj"
    ]
    assert list(find_targets(model, "model.layers.[0].*.v_proj")) == [
        "model.layers.0.self_attn.v_proj"
    ]
    assert matches("q_proj", "a.q_proj") and not matches("q_proj", "a.q_proj_x")
    assert not matches("proj", "a.q_proj")


def test_unknown_target_lists_the_candidates():
    with pytest.raises(SpectraError) as err:
        find_targets(base_model("gpt2"), ("q_proj", "c_attn"))
    message = str(err.value)
    assert "['q_proj']" in message and "c_attn" in message and "c_proj" in message
    assert "\n" not in message


def test_merged_adapter_is_refused():
    model = with_method(base_model("llama"), "lora", ("q_proj",))
    model.base_model.model.model.layers[0].self_attn.q_proj.merge()
    with pytest.raises(SpectraError, match="unmerge"):
        find_targets(model, ("q_proj",))


def test_pissa_step0_is_the_pretrained_weight():
    original = base_model("llama").model.layers[0].self_attn.q_proj.weight.detach().double()
    model = with_method(base_model("llama"), "pissa", ("q_proj",))
    found = layout(find_targets(model, "q_proj")["model.layers.0.self_attn.q_proj"])
    assert relative_error(effective_weight(found.kind, found.frozen | found.step), original) < 1e-6


def test_spectra_sorsa_layer_equals_its_own_float64_merge():
    from spectra.sorsa import apply_sorsa

    model = base_model("llama")
    apply_sorsa(model, ("q_proj", "v_proj"), 4)
    perturb(model)
    layers = find_targets(model, ("q_proj", "v_proj"))
    layouts = {path: layout(module) for path, module in layers.items()}
    assert detect_method(model, layouts) == "sorsa" and len(layouts) == 4
    merged = copy.deepcopy(model).double()
    for path, found in layouts.items():
        module = merged.get_submodule(path)
        module.merge()
        got = effective_weight(found.kind, found.frozen | found.step)
        assert relative_error(got, module.weight) <= 1e-12, path
        assert "values" in found.step  # singular-vector factors: ortho_err is defined


def test_the_active_adapter_is_captured():
    model = with_method(base_model("llama"), "lora", ("q_proj",))
    model.add_adapter("other", LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"]))
    model.set_adapter("other")
    perturb(model)  # moves only the trainable, i.e. active, adapter
    layers = find_targets(model, "q_proj")
    expected = reference_weights(model, "lora", layers)
    for path, module in layers.items():
        found = layout(module)
        assert found.step["left"].shape[1] == 2 and float(found.step["scale"]) == 3.0
        got = effective_weight(found.kind, found.frozen | found.step)
        assert relative_error(got, expected[path]) <= 1e-12


@pytest.mark.parametrize(
    ("target", "path", "selected"),
    [
        ("q_proj", "model.layers.0.self_attn.q_proj", True),
        ("self_attn.q_proj", "model.layers.0.self_attn.q_proj", True),
        ("0.self_attn.q_proj", "model.layers.10.self_attn.q_proj", False),
        ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj", True),
        ("*.layers.[01].*.q_proj", "model.layers.1.self_attn.q_proj", True),
        ("*.layers.[01].*.q_proj", "model.layers.2.self_attn.q_proj", False),
        ("c_attn", "transformer.h.0.attn.c_attn[q]", True),
        ("c_attn[q]", "transformer.h.0.attn.c_attn[q]", True),
        ("c_attn[q]", "transformer.h.0.attn.c_attn[v]", False),
        ("c_attn[q]", "transformer.h.0.attn.c_attn", False),
        ("*.0.attn.c_attn[v]", "transformer.h.0.attn.c_attn[v]", True),
        ("transformer.h.0.attn.c_attn[k]", "transformer.h.0.attn.c_attn[k]", True),
        ("attn", "transformer.h.0.attn.c_attn[k]", False),
    ],
)
def test_one_target_rule(target, path, selected):
    assert matches(target, path) is selected
