"""Every architecture of the registry, FT and LoRA: the default targets are its query and
value projections, a fused projection's slices are the q, k and v its own forward computes,
and captured weights and metric rows equal independent float64 computations."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from baichuan import BaichuanConfig, BaichuanForCausalLM
from helpers import relative_error
from peft import IA3Config, LoraConfig, get_peft_model
from tiny_models import (
    ARCHS,
    base_model,
    batch,
    perturb,
    reference_principal,
    reference_weights,
    with_method,
)

import spectra
from spectra.architectures import default_targets, fused_rows, settings, spec_rows
from spectra.capture import find_layers, layout, module_paths, split_slice
from spectra.engine import compute_run
from spectra.errors import SpectraError
from spectra.factors import effective_weight, slice_rows
from spectra.snapshots import open_run

R = 4
# What each architecture calls its query and value projections, or its fused q/k/v module:
# written from the transformers modeling code, not from spectra's registry.
QUERY_VALUE = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "gemma", "opt", "gptj"), ("q_proj", "v_proj")),
    **dict.fromkeys(("bert", "roberta"), ("query", "value")),
    "t5": ("q", "v"),
}
FUSED = {
    "gpt2": "c_attn",
    "gpt_neox": "query_key_value",
    **dict.fromkeys(("falcon-gqa", "falcon-mqa", "falcon-mha"), "query_key_value"),
    "phi3": "qkv_proj",
    "baichuan": "W_pack",
}
assert set(QUERY_VALUE) | set(FUSED) == set(ARCHS)
CASES = [(arch, method) for arch in ARCHS for method in ("ft", "lora")]
FUSED_CASES = [(arch, method) for arch, method in CASES if arch in FUSED]
# Every other method on a fused Conv1D (GPT-2) and a fused Linear (Phi-3; SORSA needs Linear).
METHOD_CASES = [("gpt2", m) for m in ("pissa", "dora", "adalora")] + [
    ("phi3", m) for m in ("pissa", "dora", "adalora", "sorsa")
]


def adapted(arch: str) -> list[str]:
    return [FUSED[arch]] if arch in FUSED else list(QUERY_VALUE[arch])


def references(model, method: str, paths: list[str]) -> dict:
    """W_t (and W_p, and SORSA's orthonormality error) of every module, merged by
    transformers/peft/the SORSA layer in float64."""
    principal = reference_principal(model, method, paths) if method != "ft" else {}
    ortho = {}
    for path in paths if method == "sorsa" else ():
        module = model.get_submodule(path)
        b, a = module.sorsa_B.detach().double(), module.sorsa_A.detach().double()
        eye = torch.eye(R, dtype=torch.float64)
        ortho[path] = float(torch.dist(b.T @ b, eye) + torch.dist(a @ a.T, eye))
    weight = reference_weights(model, method, paths)
    return {"weight": weight, "principal": principal, "ortho": ortho}


def ids(cases):
    return [f"{a}-{m}" for a, m in cases]


@pytest.fixture(scope="module", params=CASES, ids=ids(CASES))
def tracked(request, tmp_path_factory):
    """A tiny model of the architecture tracked with the default targets for steps 0 and 1."""
    arch, method = request.param
    model = base_model(arch)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=R, lora_alpha=8, target_modules=adapted(arch)))
    elif method != "ft":
        model = with_method(model, method, tuple(adapted(arch)), r=R)
    perturb(model, seed=1)
    out = tmp_path_factory.mktemp(arch) / "run"
    tracker = spectra.Tracker(model, out, every=1, mode="deferred")
    paths = module_paths(tracker.layers)
    refs = {0: references(model, method, paths)}
    perturb(model, seed=2)  # one training step
    tracker.step(1)
    refs[1] = references(model, method, paths)
    tracker.close()
    rows = pd.read_parquet(compute_run(out))
    return SimpleNamespace(arch=arch, method=method, model=model, run=open_run(out), refs=refs,
                           rows=rows)  # fmt: skip


def reference_slice(tracked, what: str, step: int, layer: str) -> torch.Tensor:
    target = tracked.run.manifest.targets[layer]
    whole = tracked.refs[step][what][split_slice(layer)[0]]
    if target.rows is None:
        return whole
    return torch.cat([whole[a:b] for a, b in target.rows])


@pytest.mark.slow
def test_default_targets_are_query_and_value(tracked):
    names = {layer.rsplit(".", 1)[-1] for layer in tracked.run.layers}
    blocks = {split_slice(layer)[0] for layer in tracked.run.layers}
    if tracked.arch in FUSED:
        parts = "qkv" if tracked.method == "lora" else "qv"  # LoRA: the adapted modules, whole
        assert names == {f"{FUSED[tracked.arch]}[{p}]" for p in parts}
    else:
        assert names == set(QUERY_VALUE[tracked.arch])
    modules = 6 if tracked.arch == "t5" else 2  # T5: encoder, decoder and cross attention
    assert len(blocks) == modules * (1 if tracked.arch in FUSED else 2)
    assert tracked.run.manifest.method == tracked.method


def test_captured_weights_equal_float64_merge(tracked):
    for step in (0, 1):
        for layer in tracked.run.layers:
            want = reference_slice(tracked, "weight", step, layer)
            assert relative_error(tracked.run.weight(step, layer), want) <= 1e-12, (step, layer)


@pytest.mark.slow
def test_rows_equal_spectra_drift_on_the_slices(tracked):
    assert len(tracked.rows) == 2 * len(tracked.run.layers)
    for row in tracked.rows.to_dict("records"):
        step, layer = row["step"], row["layer"]
        w0 = reference_slice(tracked, "weight", 0, layer)
        want = spectra.drift(w0, reference_slice(tracked, "weight", step, layer))
        for name, value in want.items():
            assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, step, layer)
        assert row["rows"] == w0.shape[0] and row["cols"] == w0.shape[1]
        if tracked.method == "ft":
            assert pd.isna(row["rank"]) and pd.isna(row["cond_p"])
            continue
        s = torch.linalg.svdvals(reference_slice(tracked, "principal", step, layer))[:R]
        assert row["rank"] == R
        assert row["cond_p"] == pytest.approx(float(s[0] / s[-1]), rel=1e-6)
        if tracked.method == "sorsa":  # a slice's is its module's: U_p, V_p whole
            ortho = tracked.refs[step]["ortho"][split_slice(layer)[0]]
            assert row["ortho_err"] == pytest.approx(ortho, rel=1e-9)
        else:
            assert pd.isna(row["ortho_err"])


@pytest.mark.slow
@pytest.mark.parametrize("tracked", METHOD_CASES, indirect=True, ids=ids(METHOD_CASES))
def test_every_method_on_a_fused_module(tracked):
    """PiSSA, DoRA, AdaLoRA (and SORSA on Linear): slices of the effective weight and of W_p."""
    assert {split_slice(layer)[1] for layer in tracked.run.layers} == {"q", "k", "v"}
    test_captured_weights_equal_float64_merge(tracked)
    test_rows_equal_spectra_drift_on_the_slices(tracked)


def check_slices_against_forward(model, targets, monkeypatch, **inputs) -> int:
    """Run ``model`` (float64, eval) on ``inputs`` and check that the q, k and v its attention
    passes to SDPA equal x @ W_slice.T + b_slice, x the fused module's input and W_slice the
    slice of its captured effective weight; return how many slices were checked."""
    layers = find_layers(model, targets)
    modules = {layer.path: layer.module for layer in layers.values()}
    inputs_of, seen = {}, []
    for path, module in modules.items():
        module.register_forward_pre_hook(lambda m, a, path=path: inputs_of.setdefault(path, a[0]))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        seen.append({"q": query, "k": key, "v": value})
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        model(**inputs)
    assert len(seen) == len(modules) == len(inputs_of)
    checked = 0
    for path, got in zip(modules, seen, strict=True):
        x, module = inputs_of[path], modules[path]
        found = layout(module)
        bias = getattr(getattr(module, "base_layer", module), "bias", None)
        for part in "qkv":
            if f"{path}[{part}]" not in layers:
                continue
            rows = layers[f"{path}[{part}]"].rows
            w = effective_weight(found.kind, slice_rows(found.frozen | found.step, rows))
            want = x @ w.T
            if bias is not None:
                want = want + torch.cat([bias[a:b] for a, b in rows]).double()
            b, heads, n, d = got[part].shape
            want = want.view(b, n, -1, d).transpose(1, 2)  # (batch, heads of the slice, seq, d)
            want = want.repeat_interleave(heads // want.shape[1], dim=1)  # shared k/v heads
            error = relative_error(got[part].reshape(-1, d), want.reshape(-1, d))
            assert error <= 1e-12, (path, part, error)
            checked += 1
    return checked


@pytest.mark.parametrize("tracked", FUSED_CASES, indirect=True, ids=ids(FUSED_CASES))
def test_slices_are_what_the_attention_forward_computes(tracked, monkeypatch):
    """Every slicing rule against the model's own attention: q, k and v at positions 0 (where
    rotary embeddings are the identity), for FT and LoRA weights, in float64."""
    model = copy.deepcopy(tracked.model).double().eval()
    tokens = batch(3)
    positions = torch.zeros_like(tokens)
    checked = check_slices_against_forward(
        model, FUSED[tracked.arch], monkeypatch, input_ids=tokens, position_ids=positions
    )
    assert checked == 3 * 2  # q, k, v of both blocks


def test_gpt2_cross_attention_c_attn_is_key_and_value(monkeypatch):
    """A GPT-2 decoder with cross-attention: its crossattention.c_attn holds [k; v] only."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, add_cross_attention=True)
    model = GPT2Model(config).double().eval()
    memory = torch.randn(4, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cross = find_layers(model, "crossattention.c_attn")
    assert sorted(cross) == [f"h.{b}.crossattention.c_attn[{p}]" for b in (0, 1) for p in "kv"]
    checked = check_slices_against_forward(model, "c_attn", monkeypatch, input_ids=batch(3),
                                           encoder_hidden_states=memory)  # fmt: skip
    assert checked == 2 * 3 + 2 * 2


# --- the registry on config.json dicts, explicit layouts, errors -----------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_registry_reads_config_json(arch):
    """default_targets and fused_rows give the same answers on a config.json as on the model."""
    model = base_model(arch)
    config = json.loads(model.config.to_json_string())  # what a checkpoint folder holds
    targets = default_targets(config)
    if arch in FUSED:
        assert targets == (f"{FUSED[arch]}[q]", f"{FUSED[arch]}[v]")
    else:
        assert targets == QUERY_VALUE[arch]
    for name, layer in find_layers(model, targets).items():
        rows = fused_rows(config, layer.path, layout(layer.module).step["weight"].shape[0])
        assert (rows or {}).get(split_slice(name)[1]) == layer.rows


def test_config_json_keys_left_out_take_transformers_defaults():
    """falcon-7b's config.json has no num_kv_heads, and older ones no multi_query (True)."""
    config = {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 8}
    assert settings(config)["multi_query"] is True
    assert fused_rows(config, "h.0.self_attention.query_key_value", 80) == {
        "q": ((0, 64),), "k": ((64, 72),), "v": ((72, 80),)
    }  # fmt: skip
    new = config | {"new_decoder_architecture": True}  # num_kv_heads: all 8 heads
    assert fused_rows(new, "query_key_value", 192)["k"] == tuple(
        (g * 24 + 8, g * 24 + 16) for g in range(8)
    )


def test_layout_specs():
    assert spec_rows("4,2,2", None, 8) == {"q": ((0, 4),), "k": ((4, 6),), "v": ((6, 8),)}
    assert spec_rows("2*2, 1, 1", None, 8) == {
        "q": ((0, 2), (4, 6)), "k": ((2, 3), (6, 7)), "v": ((3, 4), (7, 8))
    }  # fmt: skip
    config = {"model_type": "gpt_neox", "hidden_size": 4, "num_attention_heads": 2}
    assert spec_rows("gpt_neox", config, 12) == spec_rows("2*2,2,2", None, 12)
    with pytest.raises(SpectraError, match="do not add up to the module's 9 output rows"):
        spec_rows("4,2,2", None, 9)
    with pytest.raises(SpectraError, match="neither 'Q,K,V'"):
        spec_rows("q,k,v", None, 9)


class MysteryConfig(BaichuanConfig):
    model_type = "mystery"


def _unknown_architecture():
    torch.manual_seed(0)
    return BaichuanForCausalLM(MysteryConfig())


def test_unknown_architecture_names_its_candidates(tmp_path):
    with pytest.raises(SpectraError) as err:
        spectra.Tracker(_unknown_architecture(), tmp_path / "run", mode="deferred")
    message = str(err.value)
    assert "'mystery'" in message and "W_pack" in message and "o_proj" in message
    assert not (tmp_path / "run").exists()


def test_an_explicit_fused_layout_splits_an_unknown_module(tmp_path):
    model = _unknown_architecture()
    tracker = spectra.Tracker(model, tmp_path / "run", ("W_pack[q]", "W_pack[v]"),
                              fused={"self_attn.W_pack": "32,32,32"}, mode="deferred")  # fmt: skip
    tracker.close()
    targets = open_run(tmp_path / "run").manifest.targets
    baichuan = base_model("baichuan")
    want = find_layers(baichuan)  # the registry's layout of the same module
    assert {n: (t.source, t.rows) for n, t in targets.items()} == {
        n: (layer.path, layer.rows) for n, layer in want.items()
    }
    with pytest.raises(SpectraError, match=r"fused layouts given for \['wqkv'\]"):
        spectra.Tracker(model, tmp_path / "x", fused={"wqkv": "1,1,1"}, mode="deferred")


def test_peft_layers_spectra_does_not_capture_hide_their_insides(tmp_path):
    """The candidates never list peft internals (base_layer, default, ia3_l)."""
    model = get_peft_model(base_model("llama"), IA3Config(target_modules=["q_proj", "v_proj"],
                                                          feedforward_modules=[]))  # fmt: skip
    with pytest.raises(SpectraError) as err:
        spectra.Tracker(model, tmp_path / "run", mode="deferred")
    message = str(err.value)
    assert "q_proj" in message and "k_proj" in message
    for internal in ("base_layer", "default", "ia3"):
        assert internal not in message.split("targets:")[-1]


@pytest.mark.slow
def test_readme_callback_on_a_fused_architecture(tmp_path):
    """``SpectraCallback("runs/x")`` with no targets on a Trainer: Phi-3 with LoRA on qkv_proj
    is tracked as its q, k, v slices, which the live summary and `spectra analyze` name."""
    import io

    from rich.console import Console
    from tiny_models import RandomTokens
    from transformers import Trainer, TrainingArguments

    from spectra.follow import follow
    from spectra.report import render
    from spectra.store import load_runs

    model = get_peft_model(base_model("phi3"), LoraConfig(r=R, target_modules=["qkv_proj"]))
    args = TrainingArguments(
        output_dir=str(tmp_path / "ckpt"), max_steps=2, per_device_train_batch_size=2,
        learning_rate=1e-2, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
    )  # fmt: skip
    callback = spectra.SpectraCallback(tmp_path / "runs" / "x", every=1, mode="deferred")
    Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=[callback]).train()
    run = open_run(tmp_path / "runs" / "x")
    assert run.steps == [0, 1, 2] and run.manifest.method == "lora"
    assert sorted(run.layers) == [f"model.layers.{b}.self_attn.qkv_proj[{p}]"
                                  for b in (0, 1) for p in "kqv"]  # fmt: skip
    screen = io.StringIO()
    path = follow(tmp_path / "runs" / "x", poll=0.01, console=Console(file=screen, width=120))
    assert all(f"qkv_proj[{p}]" in screen.getvalue() for p in "qkv")
    text = render(load_runs([path]), "table")
    assert all(f"qkv_proj[{p}]" in text for p in "qkv")
