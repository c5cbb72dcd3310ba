"""QLoRA: peft LoRA and DoRA on bitsandbytes 4-bit (nf4, fp4, with and without double
quantization) and 8-bit bases of a tiny Llama, on the CPU."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from helpers import relative_error
from peft import LoraConfig, get_peft_model
from tiny_models import base_model, perturb
from transformers import BitsAndBytesConfig, LlamaForCausalLM

import spectra
from spectra.capture import find_targets, layout
from spectra.engine import compute_run
from spectra.factors import effective_weight
from spectra.run_files import FROZEN, step_file
from spectra.snapshots import open_run

bnb = pytest.importorskip("bitsandbytes")

R = 4
FOUR_BIT = {"bnb_4bit_compute_dtype": torch.float32, "load_in_4bit": True}
QUANT = {
    "nf4": BitsAndBytesConfig(bnb_4bit_quant_type="nf4", **FOUR_BIT),
    "nf4-double": BitsAndBytesConfig(bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     **FOUR_BIT),
    "fp4": BitsAndBytesConfig(bnb_4bit_quant_type="fp4", **FOUR_BIT),
    "fp4-double": BitsAndBytesConfig(bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True,
                                     **FOUR_BIT),
    "int8": BitsAndBytesConfig(load_in_8bit=True),
}  # fmt: skip
CASES = [(q, m) for q in QUANT for m in ("lora", "dora")]
# The 4-bit data types' 16 values, written from their definitions: NF4 from the QLoRA paper
# (Appendix E); FP4 is sign, 2-bit exponent, 1-bit mantissa, {0, 0.0625, 8, 12, 4, 6, 2, 3}/12.
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]  # fmt: skip
FP4 = [s * v / 12 for s in (1, -1) for v in (0, 0.0625, 8, 12, 4, 6, 2, 3)]
# A training forward multiplies x by the dequantized float32 weight (the 8-bit one by
# CB · SCB/127, MatMul8bitFp on a CPU): float32 precision.
FORWARD_TOL = 1e-6


def dequantized(layer) -> torch.Tensor:
    """The layer's weight rebuilt from its stored codes and scales, in float32 as the forward
    computes it, without bitsandbytes' dequantization functions."""
    weight = layer.weight
    if type(weight).__name__ == "Int8Params":  # rows of int8 · (row absmax / 127)
        absmax = weight.SCB if weight.SCB is not None else layer.state.SCB  # moved by a forward
        return weight.data.float() * absmax.view(-1, 1) * torch.tensor(1 / 127)
    state = weight.quant_state
    packed = weight.data.view(torch.uint8).reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    table = torch.tensor(NF4 if state.quant_type == "nf4" else FP4, dtype=torch.float32)
    absmax = state.absmax
    if state.nested:  # the block scales are themselves 8-bit, in blocks of their own
        nested = state.state2
        index = torch.arange(absmax.numel()) // nested.blocksize
        absmax = nested.code[absmax.long()] * nested.absmax[index] + state.offset
    n = math.prod(state.shape)
    values = table[codes[:n]] * absmax[torch.arange(n) // state.blocksize]
    return values.reshape(state.shape)


def reference(module) -> torch.Tensor:
    """W_t in float64 from the independent dequantization and the adapter factors."""
    name = module.active_adapters[0]
    base = dequantized(module.get_base_layer()).double()
    a, b = module.lora_A[name].weight.double(), module.lora_B[name].weight.double()
    merged = base + module.scaling[name] * (b @ a)
    if name not in module.lora_magnitude_vector:
        return merged.detach()
    magnitude = module.lora_magnitude_vector[name].weight.double().view(-1, 1)
    return (magnitude * merged / merged.norm(dim=1, keepdim=True)).detach()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    base_model("llama").save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=CASES, ids=[f"{q}-{m}" for q, m in CASES])
def quantized(request, saved):
    quant, method = request.param
    model = LlamaForCausalLM.from_pretrained(
        saved, quantization_config=QUANT[quant], device_map="cpu", dtype=torch.float32
    )
    config = LoraConfig(r=R, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                        use_dora=method == "dora")  # fmt: skip
    model = get_peft_model(model, config).train()  # eval-mode CPU inference repacks 4-bit
    perturb(model)
    return quant, method, model


def test_captured_weight_equals_independent_float64(quantized):
    _, method, model = quantized
    layers = find_targets(model)
    assert len(layers) == 4
    for path, module in layers.items():
        found = layout(module)
        assert found.method == method
        assert torch.equal(found.frozen["base"], dequantized(module.get_base_layer())), path
        got = effective_weight(found.kind, found.frozen | found.step)
        assert relative_error(got, reference(module)) <= 1e-12, path


def test_forward_agrees_with_the_captured_weight(quantized):
    model = quantized[2]
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0))
    for path, module in find_targets(model).items():
        found = layout(module)
        w = effective_weight(found.kind, found.frozen | found.step)
        with torch.no_grad():
            out = module(x)
        error = relative_error(out.reshape(-1, out.shape[-1]), x.double().reshape(-1, 64) @ w.T)
        assert error <= FORWARD_TOL, (path, error)


def test_tracked_run_keeps_factors_only(quantized, tmp_path, monkeypatch):
    """The base is dequantized once per module, when tracking starts; snapshots hold factors."""
    import spectra.capture.common as common

    _, method, model = quantized
    calls = []
    dequantize = common.dequantize
    monkeypatch.setattr(
        common, "dequantize", lambda layer: calls.append(layer) or dequantize(layer)
    )
    with spectra.Tracker(model, tmp_path / "run", every=1, mode="deferred") as tracker:
        refs = {0: {p: reference(m) for p, m in tracker.layers.items()}}
        perturb(model, seed=2)
        tracker.step(1)
        refs[1] = {p: reference(m) for p, m in tracker.layers.items()}
    assert len(calls) == len(tracker.layers) == 4
    run = open_run(tmp_path / "run")
    assert run.manifest.method == method and run.manifest.rank == R
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / step_file(1)), "pt") as f:
        keys = f.keys()
    parts = {key.rsplit("/", 1)[1] for key in keys}
    assert parts == {"left", "right", "scale"} | ({"magnitude"} if method == "dora" else set())
    with safe_open(str(tmp_path / "run" / FROZEN), "pt") as f:
        frozen = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    assert {key.rsplit("/", 1)[1] for key in frozen} == {"base"}
    assert all(t.dtype == torch.float32 for t in frozen.values())
    rows = pd.read_parquet(compute_run(tmp_path / "run"))
    for row in rows.to_dict("records"):
        want = spectra.drift(refs[0][row["layer"]], refs[row["step"]][row["layer"]])
        for name, value in want.items():
            assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
        assert row["rank"] == R


@pytest.mark.slow
def test_importing_spectra_keeps_bitsandbytes_quiet():
    """bitsandbytes logs a warning about an optional CPU kernel package when imported; spectra
    loads peft (which imports bitsandbytes) with its extractors."""
    code = "from spectra.capture import layout; import bitsandbytes"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stderr == "" and result.stdout == ""


def test_a_wrong_target_lists_module_names_not_peft_internals(quantized):
    """The error on a QLoRA model once listed base_layer and default as target names."""
    from spectra.errors import SpectraError

    with pytest.raises(SpectraError) as err:
        find_targets(quantized[2], "query")
    names = str(err.value).split("targets: ")[1].split(", ")
    assert "q_proj" in names and "v_proj" in names
    assert not {"base_layer", "default", "lora_A", "lora_B"} & set(names)
